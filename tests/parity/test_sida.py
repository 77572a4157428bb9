"""SiDA parity: the fake score's update (EDM loss plus the discriminator loss through its shared
encoder), the generator's (SiD's loss plus the GAN loss, before and after the GAN joins), their
gradients, the step schedule and the discriminator's logits on an EDM UNet, against float64
restatements of mingyuanzhou/SiD branch ``sida`` @ a5510fd (sida_training/sida_loss.py:25-75
generator_share_encoder_loss, :77-126 fakescore_discriminator_share_encoder_loss;
sida_training/sida_networks.py:124-154 SongUNet_EncoderDecoder.forward up to its logits;
sida_training/sida_training_loop.py:355-440: the reductions, the schedule and the clipping).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.prediction import velocity_to_x0
from distill.methods import SiDA
from distill.nets.discriminator import channel_mean_logits
from distill.nets.edm import EDMPrecond
from distill.nets.features import bottleneck_layer, read_features
from tests.parity.nets import Velocity

DT = torch.float64
ENCODER = "body.1"  # the tiny net's hidden layer stands for the encoder output the logits average


def edm_encoder_decoder(velocity):
    """EDMPrecond_EncoderDecoder's view of an FM velocity net: ``(D(x, sigma), logits)``, the logits
    the channel mean of its encoder output (sida_networks.py:151-152), or the logits alone."""

    def forward(x, sigma, return_flag="encoder_decoder"):
        sigma = sigma.reshape(-1)
        s = sigma / (1 + sigma)
        x_s = x / (1 + sigma[:, None])
        h = velocity.body[1](velocity.body[0](torch.cat([x_s, s[:, None]], dim=1)))
        logits = h.mean(dim=1, keepdim=True)
        if return_flag == "encoder":
            return logits
        return velocity_to_x0(x_s, s, velocity.body[2](h)), logits

    return forward


def edm_denoiser(velocity):
    def denoise(x, sigma):
        sigma = sigma.reshape(-1)
        s = sigma / (1 + sigma)
        x_s = x / (1 + sigma[:, None])
        return velocity_to_x0(x_s, s, velocity(x_s, s))

    return denoise


def official_fake_score_update(fake_score, images, real_images, sigma, noise, sigma_data=0.5, ls=1.0, lsd=1.0):
    # sida_loss.py:77-126 with sigma and noise given; sida_training_loop.py:363-366 reduces and adds
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    n = noise * sigma
    y_fake, logit_fake = fake_score(images + n, sigma, "encoder_decoder")
    logit_real = fake_score(real_images + n, sigma, "encoder")  # the same sigma and noise
    loss_fake_score = weight * (y_fake - images) ** 2
    bce = nn.BCEWithLogitsLoss()
    loss_d = weight * (bce(logit_real, torch.ones_like(logit_real)) + bce(logit_fake, torch.zeros_like(logit_fake))) / 2
    batch = len(images)
    return loss_fake_score.sum() * ls / batch + loss_d.sum() * lsd / batch


def official_generator_update(true_score, fake_score, images, sigma, noise, gan_on, alpha=1.0, lsg=100.0, lsg_gan=0.01):
    # sida_loss.py:25-75 with sigma and noise given; sida_training_loop.py:402-413 reduces and combines
    y = images
    n = noise * sigma
    y_real = true_score(y + n, sigma)
    y_fake, y_d = fake_score(y + n, sigma, "encoder_decoder")
    with torch.no_grad():
        weight_factor = abs(y - y_real).to(torch.float32).mean(dim=[1], keepdim=True).clip(min=0.00001)
    loss = (y_real - y_fake) * ((y_real - y) - alpha * (y_real - y_fake)) / weight_factor
    loss_gan = nn.BCEWithLogitsLoss()(y_d.clamp(-10, 10), torch.ones_like(y_d)).to(torch.float32) / weight_factor
    loss_gan = loss_gan.mean(dim=[1], keepdim=True) * y.shape[1]  # images.shape[1] * [2] * [3]: the sample's size
    loss_gan = loss_gan.sum().mul(lsg_gan / len(y))
    loss = loss.sum().mul(lsg / len(y))
    return 0.5 * loss + 0.5 * loss_gan if gan_on else loss


def sida_with_nets():
    teacher, fake, generator = Velocity(3, seed=0), Velocity(3, seed=1), Velocity(3, seed=2)
    method = SiDA(gan_layer=ENCODER)
    method.fake_score = fake
    return method, teacher, fake, generator


def test_fake_score_update_and_its_gradient_are_sidas():
    method, _, fake, generator = sida_with_nets()
    torch.manual_seed(4)
    x_real = 0.5 * torch.randn(6, 3, dtype=DT)
    torch.manual_seed(0)
    ours = method.loss("fake_score", x_real, None, generator, 0)["loss"]
    ours_grad = torch.autograd.grad(ours, list(fake.parameters()))

    torch.manual_seed(0)  # the same draws, in the same order: generator noise, ln sigma, noise
    with torch.no_grad():
        y = method.generate(generator, x_real)
    sigma = (torch.randn([6, 1], dtype=DT) * 1.2 - 1.2).exp()
    noise = torch.randn_like(y)
    official = official_fake_score_update(edm_encoder_decoder(fake), y, x_real, sigma, noise)
    official_grad = torch.autograd.grad(official, list(fake.parameters()))
    torch.testing.assert_close(ours, official, rtol=1e-12, atol=0)
    for a, b in zip(ours_grad, official_grad, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
    # the D loss reaches the shared encoder: without it the gradient differs
    without_d = official_fake_score_update(edm_encoder_decoder(fake), y, x_real, sigma, noise, lsd=0.0)
    assert not torch.allclose(torch.autograd.grad(without_d, [fake.body[0].weight])[0], ours_grad[0])


def test_generator_update_and_its_gradient_are_sidas_before_and_after_the_gan_joins():
    method, teacher, fake, generator = sida_with_nets()
    x0 = torch.zeros(5, 3, dtype=DT)
    for step, gan_on in ((method.gan_start_step - 1, False), (method.gan_start_step, True)):
        torch.manual_seed(1)
        ours = method.loss("student", x0, teacher, generator, step)["loss"]
        ours_grad = torch.autograd.grad(ours, list(generator.parameters()))
        assert all(p.grad is None for p in fake.parameters())  # the fake score's weights take no gradient

        torch.manual_seed(1)  # generator noise, then SiD's t ~ U(0, tmax / 1000), then the noise
        y = method.generate(generator, x0)
        rnd_t = torch.rand([5, 1], dtype=DT) * 800 / 1000
        min_inv, max_inv = 0.002 ** (1 / 7), 80 ** (1 / 7)
        sigma = (max_inv + (1 - rnd_t) * (min_inv - max_inv)) ** 7
        noise = torch.randn_like(y)
        official = official_generator_update(
            edm_denoiser(teacher), edm_encoder_decoder(fake), y, sigma, noise, gan_on=gan_on
        )
        official_grad = torch.autograd.grad(official, list(generator.parameters()))
        torch.testing.assert_close(ours, official, rtol=1e-6, atol=0)  # the normaliser is float32 in both
        for a, b in zip(ours_grad, official_grad, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-10)


def test_schedule_is_sidas_image_counts_at_batch_256():
    # sida_training_loop.py:410 (GAN once cur_nimg > 200k), :425 (G steps once cur_nimg > 100k), with
    # cur_nimg = 256 k at iteration k (it grows after the update, :440)
    method = SiDA()
    for k in range(1200):
        assert ("student" in method.phases(k)) == (256 * k > 100_000)
        assert (k >= method.gan_start_step) == (256 * k > 200_000)
        assert method.phases(k)[0] == "fake_score"  # the fake score first, every iteration
    assert method.grad_value_clip("fake_score") == 1.0 and method.grad_value_clip("student") == 0.0  # :380-381


def edm_encoder_logits(net, x, sigma):
    """SongUNet_EncoderDecoder.forward up to its logits (sida_networks.py:124-152), under EDM's
    preconditioning (:327-341)."""
    unet, sigma = net.model, sigma.reshape(-1, 1, 1, 1)
    c_in = 1 / (net.sigma_data**2 + sigma**2).sqrt()
    x, emb = c_in * x, unet.map_noise((sigma.log() / 4).flatten())
    emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)
    emb = F.silu(unet.map_layer1(F.silu(unet.map_layer0(emb))))
    skips, aux = [], x
    for name, block in unet.enc.items():
        if "aux_down" in name:
            aux = block(aux)
        elif "aux_skip" in name:
            x = skips[-1] = x + block(aux)
        elif "aux_residual" in name:
            x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
        else:
            x = block(x, emb) if block.__class__.__name__ == "UNetBlock" else block(x)
            skips.append(x)
    return x.mean(dim=1, keepdim=True)


def test_logits_on_an_edm_unet_are_the_channel_mean_of_its_encoder_output():
    for encoder in ({"encoder_type": "standard"}, {"encoder_type": "residual", "resample_filter": [1, 3, 3, 1]}):
        torch.manual_seed(0)
        net = EDMPrecond(
            img_resolution=8,
            img_channels=3,
            model_type="SongUNet",
            model_channels=16,
            channel_mult=[1, 2],
            num_blocks=1,
            attn_resolutions=[4],
            dropout=0.0,
            **encoder,
        ).double()
        x, sigma = torch.randn(2, 3, 8, 8, dtype=DT), torch.tensor([0.3, 2.0], dtype=DT)
        (features,) = read_features(net, lambda root: [bottleneck_layer(root)], x, sigma)
        ours = channel_mean_logits(features)
        torch.testing.assert_close(ours, edm_encoder_logits(net, x, sigma).squeeze(1), rtol=1e-12, atol=1e-14)

"""DMD2 (Yin et al. 2024b) and DMD (2024a): distribution matching distillation (docs/methods.md 5).

The student is a K-step generator (``distill.students.generator``): at each of its times it reads
its velocity as a data estimate ``x - s v``. Three networks take part:

- the frozen teacher: the *real* score;
- a *fake-score* network, initialised from the teacher and trained online (flow-matching loss) on
  the generator's detached samples, so it tracks the generator's current distribution;
- the generator, pushed along ``mu_fake - mu_real`` on noised copies of its samples: the
  gradient of KL(p_fake || p_real), normalised per sample (``distill.core.dmd``).

Two time scales (TTUR): the fake score (and the GAN head) steps on every batch, the generator on
every ``fake_updates_per_generator``-th; too few fake updates lets the generator exploit a stale
fake score and collapse.

DMD2's GAN term (``gan_weight > 0``): a small conv head on the fake-score net's bottleneck
features classifies noised real data against noised generator samples, with non-saturating
losses. The head and the fake net learn the D loss in the fake phase; in the generator phase
the fake net is frozen and the G loss reaches the generator through it. The GAN's "real" side can
mix in teacher samples (``teacher_sample_fraction``, the turbo recipe), and it can read a frozen
network's features instead (``gan_backbone: teacher``).

Plain DMD (``regression_weight > 0``, usually with ``fake_updates_per_generator: 1`` and no GAN)
adds its regression term: the generator's one-step output on fixed noises is pulled to the
teacher's ODE endpoints from the same noises (a mean squared error here; DMD used LPIPS, whose
weights cannot be downloaded here).

f-distill (``f_divergence`` other than ``rkl``, Xu et al. 2025): the DM gradient of each sample is
scaled by the f-divergence's weight of the teacher/student density ratio, which the GAN head's
logit at the same noised sample estimates (``distill.core.f_divergence``); ``rkl`` is DMD2.

Multi-step generators train by backward simulation: each generator step picks one of the K times
(at random) and reaches it by running the current generator from fresh noise.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from distill.core.conditioning import condition_rows, conditioned
from distill.core.dmd import (
    KARRAS_STEPS,
    dm_gradient,
    dm_loss,
    edm_score_weight,
    flow_score_loss,
    karras_index_range,
    karras_times,
)
from distill.core.errors import ConfigError
from distill.core.f_divergence import F_WEIGHTINGS, density_ratio, f_weight, time_bin_normalised
from distill.core.gan import mean_probability, ns_d_loss, ns_g_loss
from distill.core.grids import make_grid
from distill.core.prediction import fm_noise, velocity_to_x0
from distill.core.samplers import sample_heun
from distill.core.time_sampling import shift_time
from distill.methods.base import Method, SamplingPlan, check_choice
from distill.nets.discriminator import FeatureHeads, data_shape_of
from distill.nets.features import bottleneck_layer, read_features
from distill.nets.freezing import frozen
from distill.nets.lpips import PerceptualDistance
from distill.students.flow_map import fake_score_copy
from distill.students.generator import (
    TRANSITIONS,
    check_generator_times,
    clamp_generator_times,
    deterministic_sample,
    generator_x0,
    sampling_times,
    training_sample,
)
from distill.students.lora import add_lora, share_frozen_weights

GAN_BACKBONES = ("fake_score", "teacher")
TIME_DISTS = ("uniform", "karras")
SCORE_WEIGHTINGS = ("uniform", "edm")
GAN_HEADS = ("patch", "dmd2")


class DMD2(Method):
    """Args:
    generator_times: the generator's FM times, decreasing from 1 (DMD2 4-step: 1, .75, .5, .25). A
        time above the student's largest noise level (EDM: s = 80/81, sigma 80) is lowered to it
        when the networks attach, so the one-step generator computes ``D(80 z; 80)`` as DMD2 does.
    dm_time_dist: the law of the DM noise level, which the fake score trains on too (FastGen
        ``dmd2.py:118-121, 344-362``; rCM's critic): ``uniform``: ``s ~ U(min_time, max_time)``,
        then ``time_shift``; ``karras``: DMD2's EDM law, a uniform index of a 1000-point Karras
        table (sigma 0.002..80, rho 7) in ``[min_time, max_time]`` of its steps for the DM term, all
        of its steps for the fake score, ``[0, gan_max_time)`` of them for the GAN noise
        (``edm_guidance.py:61-92, 138-145, 175-180``).
    min_time, max_time: range of the DM noise level: FM times (uniform) or fractions of the Karras
        table's steps (karras; DMD2: 0.02, 0.98).
    time_shift: SD3 shift of the uniform draw (rCM: 5, which favours high noise); 1 leaves it uniform.
    fake_score_weighting: ``uniform`` (velocity MSE) or ``edm`` (DMD2's EDM weight
        ``1 / sigma^2 + 1 / sigma_data^2`` on the x0 error, restated exactly on the velocity error).
    sigma_data: sigma_data of the ``edm`` weighting (EDM: 0.5; rCM's critic: 1).
    fake_updates_per_generator: TTUR ratio (DMD2: 5; DMD: 1).
    fake_lr_ratio: fake-score (and GAN head) lr / generator lr.
    gan_weight: weight of the generator's GAN loss (DMD2 ImageNet: 3e-3); 0 disables the GAN.
    gan_d_weight: weight of the D loss added to the fake-score loss (DMD2: 1e-2).
    gan_max_time: GAN inputs are noised to s ~ U(0, gan_max_time) (DMD2: all of [0, 1)); with
        ``dm_time_dist: karras``, the fraction of the Karras table's steps.
    gan_head: ``patch`` (conv head to about 2x2 logits, averaged) or ``dmd2`` (DMD2's
        ``cls_pred_branch``: down to 4x4, then a 4x4/s4 conv to one logit, ``edm_guidance.py:47-56``).
    gan_backbone: ``fake_score`` (DMD2: heads on the trainable fake net's bottleneck) or
        ``teacher`` (heads on the frozen teacher's bottleneck: no gradient into any backbone).
    gan_layers: layers the heads read; None picks the backbone's bottleneck.
    gan_head_width: hidden width of vector heads (MLP nets).
    teacher_sample_fraction: share of the GAN's real batch replaced by teacher samples (0: data only).
    teacher_sample_steps: Heun steps for those teacher samples.
    regression_weight: DMD's regression on teacher ODE pairs (0: DMD2, no regression).
    regression_pairs, regression_steps: size of the fixed pair set and the teacher's Heun steps.
    regression_lpips: None regresses with MSE; ``{backbone, linear, resize}`` (local weight files of
        ``distill.nets.lpips.LPIPS``) regresses with LPIPS, as DMD does (RGB images).
    pairs_per_step: pairs added to the set per generator step until it is full.
    transition: how the K-step generator moves between its times, in training and sampling:
        ``renoise`` (DMD2: jump to x0, re-noise with fresh noise; one random step carries the
        gradient, reached by backward simulation) or ``deterministic`` (DDIM jumps with the model's
        own noise estimate, the DM and GAN losses on the last step's x0, the gradient through every
        step): what a PCM-warm-started student's edge-to-edge sampler does.
    fake_score_lora: None trains the whole fake-score copy; ``{rank, alpha, targets}`` trains LoRA
        adapters on it instead, its frozen body being the teacher's own tensors (one copy in memory).
    f_divergence: ``rkl`` (DMD's reverse KL) or another key of ``F_WEIGHTINGS`` (f-distill: needs
        the GAN, whose head reads the DM term's own noised samples for the density ratio).
    ratio_lower, ratio_upper: the density ratio's clamp (FastGen: 0.1, 20).
    ratio_bins: 0 uses the ratio as it is; K > 0 divides it by its running mean in K equal bins of
        the noise level (FastGen: 10), updated with ``ratio_ema_rate`` (FastGen: 0, the batch's mean).
    name: the sampler name on result rows.
    """

    name = "dmd2"
    optimizer_names = ("fake_score", "student")

    def __init__(
        self,
        generator_times: Sequence[float] = (1.0, 0.75, 0.5, 0.25),
        min_time: float = 0.02,
        max_time: float = 0.98,
        time_shift: float = 1.0,
        dm_time_dist: str = "uniform",
        fake_score_weighting: str = "uniform",
        sigma_data: float = 0.5,
        fake_updates_per_generator: int = 5,
        fake_lr_ratio: float = 1.0,
        gan_weight: float = 0.0,
        gan_d_weight: float = 1e-2,
        gan_max_time: float = 1.0,
        gan_backbone: str = "fake_score",
        gan_layers: Sequence[str] | None = None,
        gan_head_width: int = 128,
        gan_head: str = "patch",
        teacher_sample_fraction: float = 0.0,
        teacher_sample_steps: int = 8,
        regression_weight: float = 0.0,
        regression_pairs: int = 1024,
        regression_steps: int = 32,
        pairs_per_step: int = 16,
        fake_score_lora: dict | None = None,
        transition: str = "renoise",
        regression_lpips: dict | None = None,
        f_divergence: str = "rkl",
        ratio_lower: float = 0.1,
        ratio_upper: float = 20.0,
        ratio_bins: int = 10,
        ratio_ema_rate: float = 0.0,
        name: str = "dmd2",
    ):
        super().__init__()
        # LPIPS for DMD's regression (a plain attribute: its VGG is never checkpointed)
        self.regression_lpips = PerceptualDistance(regression_lpips) if regression_lpips else None
        check_choice("gan_backbone", gan_backbone, GAN_BACKBONES)
        check_choice("transition", transition, TRANSITIONS)
        self.transition = transition
        check_choice("dm_time_dist", dm_time_dist, TIME_DISTS)
        check_choice("fake_score_weighting", fake_score_weighting, SCORE_WEIGHTINGS)
        check_choice("gan_head", gan_head, GAN_HEADS)
        if dm_time_dist == "karras" and time_shift != 1:
            raise ConfigError(
                f"method.objective.time_shift={time_shift} shifts FM times; the karras law has its own: set it to 1"
            )
        if sigma_data <= 0:
            raise ConfigError(f"method.objective.sigma_data={sigma_data} must be > 0")
        if fake_updates_per_generator < 1:
            raise ConfigError(f"method.objective.fake_updates_per_generator={fake_updates_per_generator} must be >= 1")
        if not 0 <= min_time < max_time <= 1:
            raise ConfigError(f"method.objective.min_time={min_time}, max_time={max_time}: need 0 <= min < max <= 1")
        if not 0 <= teacher_sample_fraction <= 1:
            raise ConfigError(f"method.objective.teacher_sample_fraction={teacher_sample_fraction} must be in [0, 1]")
        check_choice("f_divergence", f_divergence, tuple(F_WEIGHTINGS))
        if f_divergence != "rkl" and gan_weight <= 0:
            raise ConfigError(
                f"method.objective.f_divergence={f_divergence} reads the density ratio from the GAN head: "
                "set method.objective.gan_weight > 0 (f-distill: 3e-3), or f_divergence=rkl for plain DMD2"
            )
        if not 0 < ratio_lower <= ratio_upper:
            raise ConfigError(
                f"method.objective.ratio_lower={ratio_lower}, ratio_upper={ratio_upper}: need 0 < lower <= upper"
            )
        if ratio_bins < 0 or not 0 <= ratio_ema_rate < 1:
            raise ConfigError(
                f"method.objective.ratio_bins={ratio_bins} must be >= 0 and ratio_ema_rate={ratio_ema_rate} in [0, 1)"
            )
        self.f_divergence, self.ratio_lower, self.ratio_upper = f_divergence, ratio_lower, ratio_upper
        self.ratio_ema_rate = ratio_ema_rate
        self.name = name
        self.times = check_generator_times(generator_times)
        self.min_time, self.max_time, self.time_shift = min_time, max_time, time_shift
        self.dm_time_dist, self.fake_score_weighting, self.sigma_data = dm_time_dist, fake_score_weighting, sigma_data
        self.gan_head = gan_head
        self.ratio, self.fake_lr_ratio = fake_updates_per_generator, fake_lr_ratio
        self.gan_weight, self.gan_d_weight, self.gan_max_time = gan_weight, gan_d_weight, gan_max_time
        self.gan_backbone, self.gan_layers, self.gan_head_width = gan_backbone, gan_layers, gan_head_width
        self.teacher_sample_fraction, self.teacher_sample_steps = teacher_sample_fraction, teacher_sample_steps
        self.regression_weight, self.regression_pairs, self.regression_steps = (
            regression_weight,
            regression_pairs,
            regression_steps,
        )
        self.pairs_per_step = pairs_per_step
        self.fake_score_lora = dict(fake_score_lora) if fake_score_lora else None
        self.class_conditional = regression_weight == 0  # DMD's regression pairs carry no labels
        # the generator starts from noise; only a GAN whose real side holds data reads the images
        self.data_role = "real" if gan_weight > 0 and teacher_sample_fraction < 1 else "shape"
        self.fake_score: nn.Module | None = None
        self.gan_heads: nn.Module | None = None
        # DMD's regression pairs grow during training: checkpointed, so a resumed run has the same set.
        self.register_buffer("pair_noise", torch.empty(0), persistent=regression_weight > 0)
        self.register_buffer("pair_target", torch.empty(0), persistent=regression_weight > 0)
        # f-distill's running mean ratio per noise-level bin: checkpointed, so a resume continues it.
        weighted = f_divergence != "rkl" and ratio_bins > 0
        self.register_buffer("ratio_bin_means", torch.ones(ratio_bins if weighted else 0), persistent=weighted)

    # --- networks -------------------------------------------------------------------------
    def attach(self, teacher: nn.Module, student: nn.Module) -> None:
        self.times = clamp_generator_times(self.times, student)
        if self.fake_score is None:
            self.fake_score = fake_score_copy(teacher, student)
            if self.fake_score_lora:
                add_lora(self.fake_score, **self.fake_score_lora)
                share_frozen_weights(self.fake_score, getattr(teacher, "model", teacher))
        if self.gan_weight > 0 and self.gan_heads is None:
            self.gan_heads = self._build_heads(teacher, student)

    def _gan_root(self, teacher: nn.Module) -> nn.Module:
        return self.fake_score if self.gan_backbone == "fake_score" else getattr(teacher, "model", teacher)

    def _layers(self, root: nn.Module) -> list[str]:
        return list(self.gan_layers) if self.gan_layers else [bottleneck_layer(root)]

    def _build_heads(self, teacher: nn.Module, student: nn.Module) -> nn.Module:
        device = next(student.parameters()).device
        x, s = torch.zeros(2, *data_shape_of(student), device=device), torch.full((2,), 0.5, device=device)
        with torch.no_grad():
            shapes = [tuple(f.shape[1:]) for f in self.gan_features(x, s, teacher)]
        return FeatureHeads(shapes, width=self.gan_head_width, single_logit=self.gan_head == "dmd2").to(device)

    def gan_features(self, x_s: Tensor, s: Tensor, teacher: nn.Module) -> list[Tensor]:
        """The backbone's features at the GAN layers (an analytic teacher's: the state itself)."""
        root = self._gan_root(teacher)
        return read_features(root, self._layers, x_s, s)

    def prepare_to_load(self, state_dict: dict[str, Tensor], student: nn.Module) -> None:
        # attach() already built every network a checkpoint of this config holds.
        if self.fake_score is None and any(k.startswith("fake_score.") for k in state_dict):
            raise RuntimeError("load a DMD2 checkpoint into a DistillModule (it attaches the fake-score net)")
        for name in ("pair_noise", "pair_target"):  # as many pairs as the checkpoint had grown
            if name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[name]))

    def trainable_parameters(self, optimizer: str, student: nn.Module) -> Iterable[nn.Parameter]:
        if optimizer == "student":
            return super().trainable_parameters(optimizer, student)
        params = [p for p in self.fake_score.parameters() if p.requires_grad]  # LoRA: the adapters only
        return params + (list(self.gan_heads.parameters()) if self.gan_heads is not None else [])

    def phases(self, step: int) -> Sequence[str]:
        return ("fake_score", "student") if step % self.ratio == 0 else ("fake_score",)

    def lr_scale(self, optimizer: str, step: int) -> float:
        return self.fake_lr_ratio if optimizer == "fake_score" else 1.0

    # --- the generator ----------------------------------------------------------------------
    def _karras_times(self, lo: int, hi: int, n: int, like: Tensor) -> Tensor:
        """n FM times of the Karras table at indices uniform on [lo, hi)."""
        index = torch.randint(lo, hi, (n,), device=like.device)
        return karras_times().to(device=like.device, dtype=like.dtype)[index]

    def _dm_times(self, n: int, like: Tensor) -> Tensor:
        """The DM term's noise levels (B,) (``dm_time_dist``)."""
        if self.dm_time_dist == "karras":
            return self._karras_times(*karras_index_range(self.min_time, self.max_time), n, like)
        u = self.min_time + (self.max_time - self.min_time) * torch.rand(n, device=like.device, dtype=like.dtype)
        return shift_time(u, self.time_shift) if self.time_shift != 1 else u

    def _fake_times(self, n: int, like: Tensor) -> Tensor:
        """The fake score's training noise levels: the DM term's law, so it is trained where it is
        read; DMD2's karras law trains it on every step of its table."""
        if self.dm_time_dist == "karras":
            return self._karras_times(0, KARRAS_STEPS, n, like)
        return self._dm_times(n, like)

    def dm_term(
        self,
        x_hat: Tensor,
        teacher: nn.Module,
        s: Tensor | None = None,
        eps: Tensor | None = None,
        scale: Tensor | None = None,
    ) -> Tensor:
        """The distribution-matching loss of generator samples x_hat (grad flows into x_hat only).

        ``s`` (B,) and ``eps`` (like x_hat) fix the noise level and noise (None: drawn); ``scale``
        (B,) multiplies each sample's gradient (f-distill's weight; None: 1).
        """
        with torch.no_grad():
            s = self._dm_times(x_hat.shape[0], x_hat) if s is None else s
            eps = torch.randn_like(x_hat) if eps is None else eps
            x_s = fm_noise(x_hat.detach(), eps, s)
            mu_real = velocity_to_x0(x_s, s, teacher(x_s, s))
            mu_fake = generator_x0(self.fake_score, x_s, s)
            grad = dm_gradient(x_hat.detach(), mu_real, mu_fake)
            if scale is not None:
                grad = grad * scale.double().reshape(-1, *[1] * (grad.ndim - 1))
        return dm_loss(x_hat, grad)

    def f_scale(self, logits: list[Tensor], s: Tensor) -> Tensor:
        """f-distill's per-sample DM scale from the GAN logits at the DM term's noised samples."""
        per_sample = torch.cat([lg.reshape(len(lg), -1) for lg in logits], dim=1)  # (B,) vector heads too
        ratio = density_ratio(per_sample, self.ratio_lower, self.ratio_upper)
        if len(self.ratio_bin_means):
            ratio = time_bin_normalised(ratio, s, self.ratio_bin_means, self.ratio_ema_rate)
        return f_weight(ratio, self.f_divergence)

    # --- the GAN --------------------------------------------------------------------------
    def _gan_times(self, n: int, like: Tensor) -> Tensor:
        if self.dm_time_dist == "karras":  # DMD2: index ~ randint(0, diffusion_gan_max_timestep)
            return self._karras_times(0, max(1, int(self.gan_max_time * KARRAS_STEPS)), n, like)
        return self.gan_max_time * torch.rand(n, device=like.device, dtype=like.dtype)

    def gan_logits(self, x: Tensor, teacher: nn.Module) -> list[Tensor]:
        """Heads' logits on x noised to a random GAN time, through the backbone's tapped features."""
        s = self._gan_times(x.shape[0], x)
        return self.gan_heads(self.gan_features(fm_noise(x, torch.randn_like(x), s), s, teacher))

    @torch.no_grad()
    def teacher_samples(self, teacher: nn.Module, n: int, like: Tensor) -> Tensor:
        """Teacher samples for the last ``n`` rows of the batch ``like``, under those rows' condition."""
        grid = make_grid("cosine", self.teacher_sample_steps).to(like)
        with conditioned(condition_rows(slice(like.shape[0] - n, None), like.shape[0])):
            return sample_heun(teacher, torch.randn(n, *like.shape[1:], device=like.device, dtype=like.dtype), grid)

    def gan_real(self, x0: Tensor, teacher: nn.Module) -> Tensor:
        """The GAN's real batch: data, with a fixed share swapped for teacher samples (turbo recipe)."""
        n_teacher = round(self.teacher_sample_fraction * x0.shape[0])
        if n_teacher == 0:
            return x0
        return torch.cat([x0[: x0.shape[0] - n_teacher], self.teacher_samples(teacher, n_teacher, x0)])

    # --- DMD's regression term ----------------------------------------------------------------
    @torch.no_grad()
    def grow_pairs(self, teacher: nn.Module, like: Tensor) -> None:
        """Add ``pairs_per_step`` teacher ODE pairs to the fixed set until it holds ``regression_pairs``.

        Built a few pairs per step instead of all at once, so no step stalls on thousands of ODE
        solves; the noises come from a fixed seed, so the set is the same in every run.
        """
        have = len(self.pair_noise)
        if have >= self.regression_pairs:
            return
        n = min(self.pairs_per_step, self.regression_pairs - have)
        gen = torch.Generator().manual_seed(1234 + have)
        noise = torch.randn(n, *like.shape[1:], generator=gen).to(like)
        target = sample_heun(teacher, noise, make_grid("cosine", self.regression_steps).to(like))
        self.pair_noise = torch.cat([self.pair_noise.to(like), noise]) if have else noise
        self.pair_target = torch.cat([self.pair_target.to(like), target]) if have else target

    def regression_term(self, student: nn.Module, teacher: nn.Module, like: Tensor) -> Tensor:
        """MSE of the one-step generator on the fixed noises to the teacher's ODE endpoints from them."""
        self.grow_pairs(teacher, like)
        idx = torch.randint(len(self.pair_noise), (like.shape[0],), device=like.device)
        noise = self.pair_noise[idx]
        s = self.times[0].to(like).expand(len(noise))  # the one-step generator's time (EDM: 80/81)
        pred = generator_x0(student, s[0] * noise, s)
        if self.regression_lpips is not None:  # DMD's own distance
            return self.regression_lpips(pred, self.pair_target[idx]).mean()
        return (pred - self.pair_target[idx]).pow(2).mean()

    # --- losses ---------------------------------------------------------------------------
    def loss(self, phase: str, x0: Tensor, teacher: nn.Module, student: nn.Module, step: int) -> dict[str, Tensor]:
        if phase == "fake_score":
            return self.fake_score_loss(x0, teacher, student)
        return self.generator_loss(x0, teacher, student)

    def fake_score_loss(self, x0: Tensor, teacher: nn.Module, student: nn.Module) -> dict[str, Tensor]:
        with torch.no_grad():
            x_hat = self.generator_sample(student, torch.randn_like(x0))
        score = self.fake_score_term(x_hat, self._fake_times(x0.shape[0], x0), torch.randn_like(x0))
        if self.gan_heads is None:
            return {"loss": score, "score": score.detach()}
        real_logits = self.gan_logits(self.gan_real(x0, teacher), teacher)
        fake_logits = self.gan_logits(x_hat, teacher)
        d_loss = ns_d_loss(real_logits, fake_logits)
        return {
            "loss": score + self.gan_d_weight * d_loss,
            "score": score.detach(),
            "gan_d": d_loss.detach(),
            "p_real": mean_probability(real_logits),
            "p_fake": mean_probability(fake_logits),
        }

    def fake_score_term(self, x_hat: Tensor, s: Tensor, eps: Tensor) -> Tensor:
        """The fake score's denoising loss on detached generator samples x_hat (B, ...) noised to
        FM times s (B,) with eps (``fake_score_weighting``)."""
        weight = edm_score_weight(s, self.sigma_data) if self.fake_score_weighting == "edm" else None
        return flow_score_loss(self.fake_score(fm_noise(x_hat, eps, s), s), x_hat, eps, weight)

    def generator_sample(self, student: nn.Module, noise: Tensor) -> Tensor:
        """The generator output the DM, GAN and fake-score losses see, by ``transition``."""
        sample = deterministic_sample if self.transition == "deterministic" else training_sample
        return sample(student, noise, self.times)[0]

    def generator_loss(self, x0: Tensor, teacher: nn.Module, student: nn.Module) -> dict[str, Tensor]:
        x_hat = self.generator_sample(student, torch.randn_like(x0))
        matching = self.f_distill_terms if self.f_divergence != "rkl" else self.dmd_terms
        total, terms = matching(x_hat, teacher)
        if self.regression_weight > 0:
            reg = self.regression_term(student, teacher, x0)
            total = total + self.regression_weight * reg
            terms["regression"] = reg.detach()
        return {"loss": total, **terms}

    def dmd_terms(self, x_hat: Tensor, teacher: nn.Module) -> tuple[Tensor, dict[str, Tensor]]:
        """DMD2's DM loss, plus its GAN's G loss on x_hat noised to a GAN time of its own."""
        dm = self.dm_term(x_hat, teacher)
        terms: dict[str, Tensor] = {"dm": dm.detach()}
        if self.gan_heads is None:
            return dm, terms
        with frozen(self.fake_score), frozen(self.gan_heads):
            g_loss = ns_g_loss(self.gan_logits(x_hat, teacher))
        terms["gan_g"] = g_loss.detach()
        return dm + self.gan_weight * g_loss, terms

    def f_distill_terms(self, x_hat: Tensor, teacher: nn.Module) -> tuple[Tensor, dict[str, Tensor]]:
        """f-distill: the GAN head reads the DM term's noised samples (same noise level and noise,
        gradient into x_hat), its logits weigh the DM gradient and give the G loss."""
        s, eps = self._dm_times(x_hat.shape[0], x_hat), torch.randn_like(x_hat)
        with frozen(self.fake_score), frozen(self.gan_heads):
            logits = self.gan_heads(self.gan_features(fm_noise(x_hat, eps, s), s, teacher))
        g_loss = ns_g_loss(logits)
        scale = self.f_scale(logits, s)
        dm = self.dm_term(x_hat, teacher, s, eps, scale)
        terms = {"dm": dm.detach(), "gan_g": g_loss.detach(), "h_min": scale.min(), "h_max": scale.max()}
        return dm + self.gan_weight * g_loss, terms

    # --- sampling ---------------------------------------------------------------------------
    def sampling_plan(self, student: nn.Module, nfe: int) -> SamplingPlan:
        """Multistep consistency sampling through the generator times, or (``transition:
        deterministic``) the DDIM chain through them, whose last jump lands on x0."""
        renoise = self.transition == "renoise"
        return SamplingPlan(student, sampling_times(self.times, nfe).tolist(), renoise=renoise)

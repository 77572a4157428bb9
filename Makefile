# distill: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The torch build to install; the default matches the wheels on the reference machine.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
SEEDS ?= 0,1,2
METHODS ?= progressive,consistency,ict,ect,scd,sct,pcm,pcm_adv,meanflow,dmd,dmd2,gdd,gdd_i,rcm,arcflow,reflow,distill_direct,bezier,bezier_single
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true

.PHONY: help setup run teacher teacher-retrain teachers-extra teacher-reflow test test-slow lint format bench table reflow-budget docs data teacher-fmnist table-fmnist fsdp-memory clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv and install distill with its dev extra (idempotent)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Where teachers are cached (paths.cache, as the configs resolve it).
CACHE := $${DISTILL_CACHE:-$$HOME/.cache/distill}

# The digits teacher is committed (experiments/weights/RECORD.md gives its recipe and hash), so a fresh
# clone distils at once; `make teacher-retrain` trains it again (2.7 minutes on 2 cores, bit-identical here).
teacher: setup ## the digits teacher in the cache: the committed one when the cache has none
	@out=$(CACHE)/teachers/digits; if [ ! -f $$out/teacher.json ]; then mkdir -p $$out && \
		cp experiments/weights/digits/model.safetensors experiments/weights/digits/teacher.json experiments/weights/digits/samples.png $$out/ && \
		echo "digits teacher: the committed one (experiments/weights/digits), copied to $$out"; \
	else echo "digits teacher: $$out"; fi

teacher-retrain: setup ## pretrain the digits teacher again into the cache (distill-pretrain dataset=digits overwrite=true)
	$(PY) -m distill.pretrain dataset=digits overwrite=true

teachers-extra: setup ## two more digits teachers for multi-teacher Bezier distillation (seed 1; seed 2, wider UNet; cached)
	$(PY) -m distill.pretrain dataset=digits seed=1 'out=$${paths.cache}/teachers/digits_s1'
	$(PY) -m distill.pretrain dataset=digits seed=2 net=unet 'out=$${paths.cache}/teachers/digits_w'

# The 2-RF run's directory and the teacher exported from it.
# The 2-RF's recipe: 4,500 batches on 65,536 teacher pairs, sampled from an EMA of its weights.
# Its 1,500-batch students beat the teacher's; 1,500 batches on 16,384 pairs (method=reflow's
# per-stage share and pair count) did not, and without the EMA two 2-RFs of one recipe (whose
# random numbers differed) differed by 0.9 in one Euler step.
REFLOW_STEPS ?= 4500
REFLOW_PAIRS ?= 65536
REFLOW_EMA ?= 0.999
teacher-reflow: setup teacher ## 2-rectified flow of the digits teacher (reflow, no distill stage; REFLOW_STEPS batches on REFLOW_PAIRS pairs, EMA REFLOW_EMA) as a teacher dir (cached per recipe)
	@run=$(CACHE)/runs/digits_2rf_$(REFLOW_STEPS)x$(REFLOW_PAIRS)_ema$(REFLOW_EMA) out=$(CACHE)/teachers/digits_2rf; \
	if grep -qs "\"source_run\": \"$$run\"" $$out/teacher.json; then echo "2-RF teacher already at $$out"; else \
	$(PY) -m distill.train experiment=bench_digits method=reflow method.objective.distill=false seed=0 \
		train.max_steps=$(REFLOW_STEPS) method.objective.pairs_per_round=$(REFLOW_PAIRS) \
		'method.ema_decays=[$(REFLOW_EMA)]' eval.teacher=false hydra.run.dir=$$run && \
	$(PY) -m distill.export_teacher run_dir=$$run out=$$out overwrite=true; fi

run: teacher ## the main job: digits teacher -> progressive distillation -> table and sample grid
	$(PY) -m distill.train
	@echo "results.json and samples/ are in the run dir named above (outputs/<run>/<time>/)"

# The fast suite runs on TEST_WORKERS processes (pytest-xdist, a test file per worker), each torch
# on one thread: on 2 cores that takes 4 minutes instead of 7 for one process on two threads, whose
# tiny tensors leave the second thread mostly idle. Every test holds on one thread and on two.
TEST_WORKERS ?= 2
test: setup ## build the docs strictly (a dead link fails) and run the fast test suite
	@site=$$(mktemp -d) && trap 'rm -rf "$$site"' EXIT && NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -q -d "$$site"
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-slow: setup ## run the slow tests too
	$(PY) -m pytest -q -m "slow or not slow"

lint: setup ## ruff check and ruff format --check (CI runs it)
	$(VENV)/bin/ruff check distill tests experiments
	$(VENV)/bin/ruff format --check distill tests experiments

format: setup ## ruff format distill, tests and experiments
	$(VENV)/bin/ruff format distill tests experiments

bench: setup teacher ## throughput and sCM JVP step-time benchmarks -> experiments/results/{bench,jvp}.md
	$(PY) experiments/bench.py --out experiments/results/bench.md
	$(PY) experiments/bench_jvp.py --out experiments/results/jvp.md

# Teacher rows are scored once, by distill-evaluate with the eval settings of experiment=bench_digits / bench_gmm.
table: setup teacher teachers-extra ## benchmark table: every method x {digits, gmm} x 3 seeds -> experiments/results/
	rm -rf experiments/runs/benchmark
	$(PY) -m distill.train -m experiment=bench_digits,bench_gmm method=$(METHODS) seed=$(SEEDS) eval.teacher=false \
		hydra.sweep.dir=experiments/runs/benchmark
	$(PY) -m distill.evaluate dataset=digits eval.num_samples=10000 progress=false \
		hydra.run.dir=experiments/runs/benchmark/teacher_digits
	$(PY) -m distill.evaluate dataset=gmm teacher=gmm_exact eval.num_samples=2000 eval.batch_size=2000 progress=false \
		hydra.run.dir=experiments/runs/benchmark/teacher_gmm
	$(PY) -m distill.table experiments/runs/benchmark --out experiments/results

# Fashion-MNIST: Debian's dataset-fashion-mnist package where apt and root are at hand, else torchvision's download.
FMNIST_DEBIAN := /usr/share/datasets/fashion-mnist
HARDWARE ?= gpu
data: setup ## Fashion-MNIST's four IDX files (apt package, else torchvision's download into the cache)
	@if ls $(FMNIST_DEBIAN)/t10k-labels-idx1-ubyte* >/dev/null 2>&1; then echo "Fashion-MNIST: $(FMNIST_DEBIAN)"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; then \
		echo "Fashion-MNIST: $(FMNIST_DEBIAN)"; \
	else $(PY) -c "from distill.data.fashion_mnist import download; print('Fashion-MNIST:', download('$(CACHE)'))"; fi

teacher-fmnist: data ## train the Fashion-MNIST teacher of HARDWARE=gpu|cpu (cached)
	$(PY) experiments/table_fmnist.py hardware=$(HARDWARE) stage=teacher

table-fmnist: data ## Fashion-MNIST table: every method, HARDWARE=gpu (3 seeds) or cpu (1 seed) -> experiments/results/fashion_mnist/
	$(PY) experiments/table_fmnist.py hardware=$(HARDWARE)

fsdp-memory: setup teacher ## per-rank weights, gradients and Adam state under FSDP on 1, 2 and 4 CPU ranks -> experiments/results/fsdp_memory.md
	$(PY) experiments/fsdp_memory.py --out experiments/results/fsdp_memory.md

REFLOW_BUDGETS ?= 100,250,500,750,1500
reflow-budget: setup teacher teacher-reflow ## 1-step students distilled from the teacher vs from its 2-RF, per distillation budget x 3 seeds -> experiments/results/reflow_budget.{md,png}
	rm -rf experiments/runs/reflow_budget
	$(PY) -m distill.train -m experiment=bench_digits method=distill_direct train.max_steps=$(REFLOW_BUDGETS) seed=$(SEEDS) \
		teacher.path=$(CACHE)/teachers/digits,$(CACHE)/teachers/digits_2rf eval.teacher=false progress=false \
		hydra.sweep.dir=experiments/runs/reflow_budget
	$(PY) experiments/reflow_budget.py experiments/runs/reflow_budget --out experiments/results

docs: setup ## refresh the README's benchmark table from experiments/results and build the docs site into .venv/site
	$(PY) experiments/readme_table.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -q -d $(VENV)/site
	@echo "docs built in $(VENV)/site (or serve them: $(VENV)/bin/mkdocs serve)"

clean: ## remove run outputs and caches (not the venv, not the teacher cache)
	rm -rf outputs multirun experiments/runs .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

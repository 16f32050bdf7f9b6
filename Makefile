# Everything runs inside .venv, which the first target that needs it creates.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CODEGEN := $(VENV)/bin/codegen
STAMP := $(VENV)/.installed

SPEC ?= specs/gpt_bigcode.yaml
PRESET ?= tiny_starcoder
TARGET ?= llvm
# A weight scheme of specs/quantization/schemes.yaml: q0f32 (float32), q0f16, q0bf16, q4f32_1, q8f32_1, ...
QUANT ?= q0f32
BUILD ?= build
# A Hugging Face model folder (config.json, safetensors or .bin, tokenizer.json). Unset: the demo
# trains a small GPTBigCode on local Python files and uses that.
MODEL_DIR ?=
PROMPT ?= def fibonacci(n):
MAX_NEW_TOKENS ?= 64
# The demo model is small: greedy decoding falls into loops, light sampling reads more like code.
# TEMPERATURE=0 gives greedy output.
TEMPERATURE ?= 0.7
TOP_P ?= 0.95
SEED ?= 0

DEMO_MODEL := $(BUILD)/demo-model
RUN_MODEL := $(if $(MODEL_DIR),$(MODEL_DIR),$(DEMO_MODEL))
ARTIFACT := $(BUILD)/artifact-$(notdir $(basename $(SPEC)))-$(TARGET)-$(QUANT)

.PHONY: help setup generate check compile convert run demo test test-quick fuzz bench bench-llamacpp eval docs clean

help:
	@echo "make demo        generate, compile, convert and run a model on the CPU (the main job)"
	@echo "make test        set up and run the whole test suite (what CI runs)"
	@echo "make test-quick  the tests not marked slow"
	@echo "make generate    render specs/*.yaml into generated/ ; make check fails when it is stale"
	@echo "make compile     SPEC=… PRESET=… TARGET=llvm|cuda QUANT=q0f32|q4f32_1|… -> $(BUILD)/…"
	@echo "make bench       CPU speed of the compiled model against transformers eager, per weight format"
	@echo "make bench-llamacpp  opt-in: builds llama.cpp, then the compiled model against it on its formats"
	@echo "make eval        perplexity per weight scheme on the demo model's held-out text"
	@echo "make fuzz        long spec-fuzzing run"

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

generate: $(STAMP)
	$(CODEGEN) generate

check: $(STAMP)
	$(CODEGEN) check

compile: $(STAMP)
	$(CODEGEN) compile --spec $(SPEC) $(if $(MODEL_DIR),--config $(MODEL_DIR)/config.json,--preset $(PRESET)) \
		--target $(TARGET) --quantization $(QUANT) --output $(BUILD)/$(notdir $(basename $(SPEC)))-$(TARGET)-$(QUANT)

$(DEMO_MODEL)/config.json $(DEMO_MODEL)/heldout.txt &: | $(STAMP)
	$(PY) -m codegen.demo_checkpoint --output $(DEMO_MODEL)

demo: $(STAMP) generate $(if $(MODEL_DIR),,$(DEMO_MODEL)/config.json)
	$(CODEGEN) compile --spec $(SPEC) --config $(RUN_MODEL)/config.json --target $(TARGET) --quantization $(QUANT) --output $(ARTIFACT)
	$(CODEGEN) convert --spec $(SPEC) --model-dir $(RUN_MODEL) --quantization $(QUANT) --output $(ARTIFACT)
	$(CODEGEN) run --artifact $(ARTIFACT) --tokenizer $(RUN_MODEL) --prompt '$(PROMPT)' --max-new-tokens $(MAX_NEW_TOKENS) \
		--temperature $(TEMPERATURE) --top-p $(TOP_P) --seed $(SEED)

test: $(STAMP)
	$(PY) -m pytest -q

test-quick: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=long $(PY) -m pytest -q tests/test_fuzz.py

bench: $(STAMP)
	$(PY) bench/cpu_bench.py

# LLAMACPP_ARGS: more options of bench/llamacpp.py (see its --help), e.g. '--rounds 3 --threads 2'.
bench-llamacpp: $(STAMP)
	$(PY) bench/llamacpp.py $(LLAMACPP_ARGS)

# Perplexity per weight scheme on held-out text (the demo model's heldout.txt, or TEXT=... with MODEL_DIR).
EVAL_SCHEMES ?= q0f32,q0f16,q0bf16,q8f32_1,q8f16_1,q4f32_1,q4f16_1
TEXT ?=
eval: $(STAMP) $(if $(MODEL_DIR),,$(DEMO_MODEL)/heldout.txt)
	$(PY) bench/quality.py --spec $(SPEC) --model-dir $(RUN_MODEL) --schemes $(EVAL_SCHEMES) --workdir $(BUILD)/eval \
		$(if $(TEXT),--text $(TEXT))

docs: $(STAMP)
	$(PY) -m codegen.spec.docs --write

clean:
	rm -rf $(BUILD)

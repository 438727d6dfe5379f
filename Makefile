# Two entry points, both self-installing: `make quickstart` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test quickstart bench

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	# CPU build of torch unless a torch is already there (GPU images keep their CUDA build).
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The rerank job end to end on a local Ray, on sample data it generates. The default model is the real
# 17M Ettin reranker from the Hub; where the Hub is unreachable the job says so (exit code 3), and this
# target reruns it, loudly, with random weights of the same shape: speed is real, scores are not.
# Offline with the real model: make quickstart MODEL=/path/to/ettin-reranker-17m-v1 (a model you name is never
# replaced by random weights: a typo in it fails with exit 3).
DEFAULT_MODEL := cross-encoder/ettin-reranker-17m-v1
MODEL ?= $(DEFAULT_MODEL)
FALLBACK_MODEL ?= random:ettin-17m
SAMPLE := sample
quickstart: $(STAMP)
	$(BIN)/python -m ettin_batch.sample_data $(SAMPLE)/candidates --queries 20 --candidates 20 --shards 4
	@$(BIN)/ettin-batch rerank --input $(SAMPLE)/candidates --output $(SAMPLE)/reranked --model $(MODEL) \
		--top-k 5 --overwrite; rc=$$?; \
	if [ $$rc -eq 3 ] && [ "$(MODEL)" = "$(DEFAULT_MODEL)" ]; then \
		echo ""; \
		echo ">>> $(MODEL) could not be loaded (no Hub access?). Rerunning with --model $(FALLBACK_MODEL):"; \
		echo ">>> RANDOM weights of the same shape: the speed is real, the scores mean nothing."; \
		echo ">>> For real scores offline: make quickstart MODEL=/path/to/a/local/model/folder"; \
		echo ""; \
		$(BIN)/ettin-batch rerank --input $(SAMPLE)/candidates --output $(SAMPLE)/reranked \
			--model $(FALLBACK_MODEL) --top-k 5 --overwrite || exit $$?; \
	elif [ $$rc -ne 0 ]; then exit $$rc; fi
	@echo "Outputs: $(SAMPLE)/reranked/ (scores/, topk/, _SUCCESS.json; rejects/ only when a row was refused)"

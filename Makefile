# The two commands that matter: `make run` and `make test`. Everything else is optional.
.PHONY: run test test-fast check bench soak bento import-model container-smoke k8s-smoke help

run:            ## start the whole system on the embedded default on http://127.0.0.1:$VQ_PORT
	@scripts/run

test:           ## run the whole test suite (installs what it needs); what CI runs
	@scripts/test

test-fast:      ## the edit-test loop: unit tests not marked slow (see CONTRIBUTING.md)
	@scripts/test -m "not slow" tests/unit

check:          ## ruff lint + format check + mypy + import layering (lint-imports)
	@scripts/check

bench:          ## benchmark raw pipeline vs served; writes docs/benchmarks.md (dataset batches included), docs/benchmarks-models.md, docs/benchmarks-priority.md and docs/benchmarks-int8.md
	@scripts/bootstrap && scripts/services --bench && .venv/bin/python -m bench && .venv/bin/python -m bench.models && .venv/bin/python -m bench.batches && .venv/bin/python -m bench.priority --rounds 3 && .venv/bin/python -m bench.int8 --served

soak:           ## 60 s at concurrency 64 + 500 jobs on the default stack; writes docs/soak.md
	@scripts/bootstrap && .venv/bin/python -m bench.soak

bento:          ## build the Bento (bentoml build)
	@scripts/bootstrap && .venv/bin/python -m model_store import --if-missing --fallback-random && .venv/bin/bentoml build

import-model:   ## import ResNet18 into the BentoML store (VQ_WEIGHTS=imagenet1k_v1|PATH|random)
	@scripts/bootstrap && .venv/bin/python -m model_store import --if-missing

container-smoke: ## build and run the container with podman (slow; not part of make test)
	@deploy/container-smoke.sh

k8s-smoke:      ## play deploy/k8s's all-in-one workloads with podman kube play (slow; root; not in make test)
	@scripts/bootstrap && scripts/services && deploy/k8s-smoke.sh

help:
	@grep -E '^[a-z-]+:.*##' Makefile | sed 's/:.*##/\t/'

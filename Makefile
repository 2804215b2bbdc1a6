# Shortcuts for developers; the README's two commands need nothing but bash and python3.
.PHONY: install run test lint bench
install:
	bash scripts/bootstrap.sh --test
run:
	bash scripts/run.sh
test:
	bash scripts/test.sh
lint:
	bash scripts/bootstrap.sh --test && bash scripts/lint.sh
bench:
	.venv/bin/python bench/run.py

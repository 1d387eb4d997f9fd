"""Score the validation reviews with the baked model's tokenizer and word list, offline.

Unmodified Hub code: from_pretrained and hf_hub_download by repo name, no paths,
no revision.  The image sets HF_HUB_OFFLINE=1, so they read the baked cache.
"""

import csv
import json
import math
import os
import socket

from huggingface_hub import hf_hub_download
from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer

MODEL = "bake-demo/tiny-sentiment"
DATASET = "bake-demo/tiny-reviews"

tokenizer = AutoTokenizer.from_pretrained(MODEL)
config = AutoConfig.from_pretrained(MODEL)
with open(hf_hub_download(MODEL, "lexicon.json"), encoding="utf-8") as fh:
    lexicon = json.load(fh)
with safe_open(hf_hub_download(MODEL, "model.safetensors"), framework="numpy") as weights:
    names = weights.keys()  # safe_open has keys() but is not iterable itself
    parameters = sum(math.prod(weights.get_slice(name).get_shape()) for name in names)
print(f"model {MODEL}: {config.model_type}, labels {sorted(config.label2id)}, "
      f"{parameters:,} parameters, vocabulary of {tokenizer.vocab_size} words")

with open(hf_hub_download(DATASET, "data/validation.csv", repo_type="dataset"),
          encoding="utf-8", newline="") as fh:
    reviews = list(csv.DictReader(fh))

right = 0
for review in reviews:
    tokens = tokenizer.tokenize(review["text"])
    score = sum(lexicon.get(token, 0) for token in tokens)
    label = 1 if score > 0 else 0
    right += label == int(review["label"])
    print(f"  {config.id2label[label]:<8} {score:+d}  {review['text']}")
print(f"{right}/{len(reviews)} reviews scored as labelled "
      f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE')}, "
      f"interfaces: {', '.join(name for _, name in socket.if_nameindex())})")

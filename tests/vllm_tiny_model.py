"""Build a tiny random-weight Llama and a locally trained BPE tokenizer for a real vLLM server.

Run with the Python that has vLLM (and so transformers, tokenizers, torch):
    python tests/vllm_tiny_model.py OUT_DIR [--paced]
Hidden size 128 with 2 heads gives head_dim 64 (the CPU attention kernel refuses 16);
nothing is downloaded. The weights are random: the model's replies are nonsense, which
is what the test wants to see handled.

``--paced`` builds a wider, deeper model (768 x 8 layers) whose decode steps take
milliseconds, as a real model's do: the 128-wide one makes tokens faster than vLLM's API
process can stream them on two cores, so clients see bursts that hide the queue order.
"""

import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CORPUS = [
    "def priority(job, now):\n    return job.arrival\n",
    "def dispatch(request, replicas, now):\n    return min(range(len(replicas)), key=lambda i: replicas[i].outstanding)\n",
    "Shorter jobs first reduces the mean completion time of a queue.",
    "<<<<<<< SEARCH\n    return job.arrival\n=======\n    return job.size\n>>>>>>> REPLACE",
    "```python\nimport math\n\ndef priority(job, now):\n    return math.log1p(job.size)\n```",
] * 20
HIDDEN_PACED, LAYERS_PACED = 768, 8


def main(out: Path, paced: bool = False) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                          "{% if add_generation_prompt %}assistant:{% endif %}")
    fast.save_pretrained(out)
    width, layers = (HIDDEN_PACED, LAYERS_PACED) if paced else (128, 2)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=width, intermediate_size=2 * width,
                         num_hidden_layers=layers, num_attention_heads=width // 64,
                         num_key_value_heads=width // 64, max_position_embeddings=8192,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, torch_dtype="bfloat16")
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]), paced="--paced" in sys.argv[2:])

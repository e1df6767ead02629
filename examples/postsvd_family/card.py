"""The model card (examples/models/README.md), written from the record of a training run."""

from __future__ import annotations

import platform
import time
from typing import Dict

from . import check, tasks
from .train import ADAPTER_NAMES, FAMILY_NAMES, MODEL_NAMES, weights_file

_ROLE = {
    "base": "pretrained from scratch (text: Python language reference, `pydoc_data.topics`)",
    "base_alt": "pretrained from scratch, other text and seeds (docstrings of the CPython standard library)",
    "instruct": "`base` + SFT on `Q: What is a + b?\\nA: <sum>`",
    "reasoning": "`base` + fine-tuning on worked column-addition traces ending in `\\boxed{<sum>}`",
    "instruct_lora": "PEFT LoRA adapter of `base`, trained on `instruct`'s task and data",
}


def model_card(record: Dict) -> str:
    recipe = record["recipe"]
    arch = recipe["architecture"]
    acc = record["accuracy"]
    sizes = record["sizes_bytes"]
    wall = record["wall_seconds"]
    weights = record["weights"]
    example = tasks.Problem(37, 85)
    lines = [
        "# The postsvd model family",
        "",
        "Four small LLaMA-architecture models and a LoRA adapter trained on this project's machine, on the CPU,",
        "offline, with fixed seeds, by `PYTHONPATH=examples python -m postsvd_family.train --out examples/models`",
        "(examples/postsvd_family/, a development package beside the models, not part of postsvd). They are",
        "the bundled example for `postsvd`: two independently pretrained bases and two post-trained versions of one",
        "of them, so that post-training can be compared with an unrelated model of the same shape, and a LoRA",
        "adapter of that base on the same task as one of them, so that LoRA can be compared with full fine-tuning.",
        "",
        "| model | what it is | held-out accuracy | weights |",
        "|---|---|---|---|",
    ]
    for name in FAMILY_NAMES:
        a = acc[name]
        lines.append(
            f"| `{name}` | {_ROLE[name]} | {a['accuracy']:.3f} ({a['correct']}/{a['n']}) | "
            f"{sizes[name] / 1e6:.2f} MB `{weights_file(name)}` |"
        )
    lora = recipe["instruct_lora"]
    lines += [
        "",
        f"Accuracy: exact match of the answer (last `\\boxed{{}}`, else the first integer of the completion), greedy",
        "decoding, on held-out two-digit additions",
        "(`PYTHONPATH=examples python -m postsvd_family.evaluate examples/models/<name>`; the adapter is merged",
        "into `base` with peft). Total bf16 size of the four models: "
        f"{sum(sizes[name] for name in MODEL_NAMES) / 1e6:.1f} MB; the adapter's float32 factors: "
        f"{sum(sizes[name] for name in ADAPTER_NAMES) / 1e6:.2f} MB.",
        "",
        "## Architecture (all four)",
        "",
        f"`LlamaForCausalLM`: hidden {arch['hidden_size']}, {arch['num_hidden_layers']} layers, "
        f"{arch['num_attention_heads']} attention heads and {arch['num_key_value_heads']} key/value heads (GQA) of "
        f"head_dim {arch['head_dim']}, MLP intermediate {arch['intermediate_size']}, untied embeddings, RoPE theta "
        f"10000, context {arch['max_position_embeddings']}. Weight shapes (HF `[out, in]`): q, o "
        f"`[{arch['hidden_size']}, {arch['hidden_size']}]`; k, v "
        f"`[{arch['num_key_value_heads'] * arch['head_dim']}, {arch['hidden_size']}]`; gate, up "
        f"`[{arch['intermediate_size']}, {arch['hidden_size']}]`; down "
        f"`[{arch['hidden_size']}, {arch['intermediate_size']}]`. Stored in bfloat16.",
        "",
        "`instruct_lora` (a PEFT folder: `adapter_config.json`, `adapter_model.safetensors` and the tokenizer):",
        f"rank {lora['r']}, lora_alpha {lora['lora_alpha']} (scaling {lora['lora_alpha'] / lora['r']:g}) on all seven "
        f"projections of every layer ({', '.join(f'`{m}`' for m in lora['target_modules'])}),",
        f"{record['stages']['instruct_lora']['trainable_parameters']} float32 parameters; its "
        f"`base_model_name_or_path` is `{record['stages']['instruct_lora']['base_model_name_or_path']}`, a folder "
        "relative to the repository root (peft and",
        "postsvd read it from the working directory; elsewhere, name the base: `postsvd compare BASE ADAPTER`).",
        "",
        "Tokenizer: one token per character (printable ASCII and newline) plus `<pad>`, `<s>`, `</s>`, `<unk>`;",
        "built with the `tokenizers` library, loads offline with `AutoTokenizer.from_pretrained(folder)`; encoding",
        "prepends `<s>`, padding is on the left.",
        "",
        "## The task",
        "",
        f"Two-digit addition (operands {tasks.OPERAND_MIN}..{tasks.OPERAND_MAX}). Each unordered operand pair is in",
        f"the train or the test split by a keyed hash ({tasks.TEST_PERCENT} % held out), so `a + b` and `b + a` are",
        "held out together and no held-out sum appears in any training data. Prompt and the two post-trained",
        "answers:",
        "",
        "```",
        example.prompt + example.instruct_target(),
        "```",
        "```",
        example.prompt + example.reasoning_target(),
        "```",
        "",
        "## How they were trained",
        "",
    ]
    for name in ("base", "base_alt"):
        p = recipe[name]
        s = record["stages"][name]
        lines.append(
            f"- `{name}`: source `{p['source']}` ({p['text_chars']} characters of text, sha256/16 of the mixed "
            f"corpus `{s['corpus_sha256_16']}`), {int(p['task_fraction'] * 100)} % of the characters plain-text "
            f"additions from the train split (`37 + 85 = 122`, `The sum of 37 and 85 is 122.`, worked column sums; "
            f"never the `Q:`/`A:` format), seed {p['seed']}, {p['steps']} steps of {p['batch_size']} x "
            f"{p['seq_len']} tokens ({s['tokens_seen']} tokens), AdamW lr {p['lr']} (warmup {p['warmup']}, cosine to "
            f"10 %), weight decay {p['weight_decay']}, betas (0.9, 0.95), grad clip 1.0; final loss "
            f"{s['final_loss']:.2g}; {s['seconds']:.0f} s."
        )
    for name in ("instruct", "reasoning"):
        p = recipe[name]
        s = record["stages"][name]
        lines.append(
            f"- `{name}`: from the saved bf16 `base`, {p['steps']} steps of {p['batch_size']} training-split problems"
            f" ({s['examples_seen']} examples), loss on the completion only, AdamW lr {p['lr']} (small, so the"
            f" weights stay close to base; warmup {p['warmup']}, cosine to 10 %), weight decay {p['weight_decay']},"
            f" seed {p['seed']}; final loss {s['final_loss']:.2g}; {s['seconds']:.0f} s."
        )
    s = record["stages"]["instruct_lora"]
    lines.append(
        f"- `instruct_lora`: from the saved bf16 `base` (frozen), the LoRA factors only (A Kaiming-uniform, B zero),"
        f" on `instruct`'s task: {lora['steps']} steps of {lora['batch_size']} training-split problems"
        f" ({s['examples_seen']} examples), loss on the completion only, AdamW lr {lora['lr']} (warmup"
        f" {lora['warmup']}, cosine to 10 %), weight decay {lora['weight_decay']}, no dropout, seed {lora['seed']};"
        f" final loss {s['final_loss']:.2g}; {s['seconds']:.0f} s, single-threaded, {s['date']}"
        f" (`PYTHONPATH=examples python -m postsvd_family.train --out examples/models --lora`)."
    )
    lines += [
        "",
        "The base models see the task as plain text during pretraining but never the `Q:`/`A:` format. On the",
        "held-out pairs they complete the pretraining form `a + b =` correctly "
        f"{record['plain_sum_accuracy']['base'] * 100:.1f} % (`base`) and "
        f"{record['plain_sum_accuracy']['base_alt'] * 100:.1f} % (`base_alt`) of the time: at this budget",
        "pretraining teaches the digit facts, the column-sum shape and the size of the answer, not reliable",
        "addition. Post-training teaches the format and finishes the skill: the worked traces (one single-digit",
        "fact per line) need few small-learning-rate steps, the direct answer needs more. Both post models stay",
        "close to `base` in weight space (below), which is the paper's setting at toy scale.",
        "",
        f"Wall time on {platform.machine()} with 2 shared CPU cores ({record['jobs']} stages at a time, "
        f"{record['torch_threads_per_stage']} torch thread each), {record.get('date') or time.strftime('%Y-%m-%d')}: "
        "pretraining "
        f"{wall['pretraining']:.0f} s, post-training {wall['post_training']:.0f} s, evaluation "
        f"{wall['evaluation']:.0f} s, weight check {wall['weight_check']:.0f} s, total {wall['total']:.0f} s "
        f"({wall['total'] / 60:.1f} min). Each stage is single-threaded and seeded, so a rerun on the same machine",
        "repeats it; other CPUs or library versions may round differently.",
        "",
        "## Weight measures (numpy float64, `PYTHONPATH=examples python -m postsvd_family.check examples/models`)",
        "",
        "NF = ||Q1^T Q2 - I||_F / k per layer and kind, min..max over the layers:",
        "",
        check.nf_table(weights),
        "",
        "NF(post vs base) < NF(base_alt vs base) in every layer and kind: "
        + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in weights["nf_post_below_base_alt_everywhere"].items())
        + "; largest ratio NF(post) / NF(base_alt): "
        + ", ".join(f"{k} {v:.3f}" for k, v in weights["max_nf_ratio_post_over_base_alt"].items())
        + ".",
        "",
        "Scaling factors sigma_post / sigma_base over the top 90 % of indices, pooled over layers (mean +- std):",
        "",
        check.scaling_table(weights),
        "",
        "At this scale the spectra of two independently pretrained bases also agree to a few percent (same shape,",
        "same data mix), so the pooled scaling statistics separate post-training from an unrelated model only",
        "weakly (smaller std); NF separates them clearly, as in the paper.",
        "",
        f"Intruder dimensions (Shuttleworth et al. 2024, Algorithm 1): of the top {weights['intruders']['k']} "
        "output-side singular vectors of each post matrix, those whose largest |cosine| with every base singular",
        f"vector is below {weights['intruders']['epsilon']:g}; summed over the {arch['num_hidden_layers']} layers "
        f"(at most {weights['intruders']['k'] * arch['num_hidden_layers']} per kind):",
        "",
        check.intruder_table(weights),
        "",
        f"What `base` does with the prompt (it never saw the `Q:`/`A:` format, so it continues with plain-text "
        f"arithmetic and the first number is not the sum): `{acc['base']['example']['prompt']!r}` -> "
        f"`{acc['base']['example']['completion'][:80]!r}...`",
        "",
        "Every number above is in `family.json` beside this file.",
        "",
    ]
    return "\n".join(lines)

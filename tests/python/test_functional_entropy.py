"""Attention entropy: against numpy, on a case with a known answer (uniform causal
attention), the temperature property, the table layout, plots and bad input."""
import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from postsvd.functional._models import encode_prompt  # noqa: E402
from postsvd.functional.entropy import (  # noqa: E402
    attention_entropy,
    entropy_of_attention,
    plot_attention_entropy,
)
from helpers import build_model, build_tokenizer  # noqa: E402

PROMPTS = ["Tom has 3 apples and buys 4 more. How many apples does he have?", "What is 81 divided by 9?"]


def causal_softmax(logits):
    """numpy float64 reference: softmax over keys j <= i."""
    heads, t, _ = logits.shape
    masked = np.where(np.tril(np.ones((t, t), bool)), logits, -np.inf)
    masked = masked - masked.max(axis=-1, keepdims=True)
    weights = np.exp(masked)
    return weights / weights.sum(axis=-1, keepdims=True)


def test_entropy_of_attention_matches_numpy():
    rng = np.random.default_rng(0)
    probs = causal_softmax(rng.normal(scale=3.0, size=(5, 9, 9)))
    terms = np.where(probs > 0, -probs * np.log(np.where(probs > 0, probs, 1.0)), 0.0)
    expected = terms.sum(axis=-1).mean(axis=-1)
    np.testing.assert_allclose(entropy_of_attention(probs), expected, rtol=1e-12)
    np.testing.assert_allclose(entropy_of_attention(probs[None]), expected, rtol=1e-12)
    # one-hot rows have entropy 0; uniform rows over i+1 keys have ln(i+1)
    assert entropy_of_attention(np.eye(4)[None]) == pytest.approx([0.0])
    uniform = np.tril(np.ones((6, 6))) / np.arange(1, 7)[:, None]
    assert entropy_of_attention(uniform[None])[0] == pytest.approx(np.mean(np.log(np.arange(1, 7))))


def test_entropy_of_attention_rejects_bad_input():
    with pytest.raises(ValueError, match=r"expected shape \[heads, queries, keys\].*got \[3, 3\]"):
        entropy_of_attention(np.eye(3))
    with pytest.raises(ValueError, match="must sum to 1"):
        entropy_of_attention(np.full((1, 2, 2), 0.2))
    bad = np.eye(3)[None].copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        entropy_of_attention(bad)


def _model_with_scaled_queries(scale, seed=0):
    model = build_model(len(build_tokenizer()), seed=seed)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(scale)
    return model


def test_uniform_attention_has_known_entropy():
    # q_proj = 0 makes every score 0: query i attends uniformly to i + 1 keys, entropy ln(i + 1)
    tok = build_tokenizer()
    model = _model_with_scaled_queries(0.0)
    table = attention_entropy({"uniform": model}, PROMPTS, tokenizer=tok)
    lengths = [len(encode_prompt(tok, p)) for p in PROMPTS]
    expected = np.mean([np.mean(np.log(np.arange(1, t + 1))) for t in lengths])
    np.testing.assert_allclose(table["entropy"], expected, rtol=1e-5)
    assert (table["n_queries"] == sum(lengths)).all() and (table["n_prompts"] == 2).all()


def test_sharper_queries_lower_entropy():
    # scaling q_proj by c scales every attention logit by c (RoPE is linear, no bias): a
    # lower temperature, so no head's entropy may rise
    tok = build_tokenizer()
    base = attention_entropy({"x": _model_with_scaled_queries(20.0)}, PROMPTS[:1], tokenizer=tok)
    sharp = attention_entropy({"x": _model_with_scaled_queries(60.0)}, PROMPTS[:1], tokenizer=tok)
    assert (sharp["entropy"].to_numpy() <= base["entropy"].to_numpy() + 1e-6).all()
    assert sharp["entropy"].mean() < base["entropy"].mean() - 1e-3


def test_table_layout_for_a_model_and_its_constructions(tiny_model_dir):
    tok = build_tokenizer()
    models = {"Instruct": tiny_model_dir, "replaced": _model_with_scaled_queries(5.0)}
    table = attention_entropy(models, PROMPTS, tokenizer=tok, layers=[1])
    assert list(table.columns) == ["model", "layer", "head", "entropy", "entropy_std", "n_prompts", "n_queries"]
    assert len(table) == 2 * 1 * 4
    assert set(table["model"]) == {"Instruct", "replaced"} and set(table["layer"]) == {1}
    assert (table["entropy"] > 0).all() and (table["entropy_std"] >= 0).all()
    per = attention_entropy(tiny_model_dir, PROMPTS, per_prompt=True)
    assert len(per) == 2 * 2 * 4 and set(per["prompt"]) == {0, 1}
    # the table is the mean of the per-prompt rows
    full = attention_entropy(tiny_model_dir, PROMPTS)
    means = per.groupby(["layer", "head"])["entropy"].mean().to_numpy()
    np.testing.assert_allclose(full["entropy"].to_numpy(), means)


def test_loaded_sdpa_model_is_switched_to_eager(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa", dtype=torch.float32)
    from_object = attention_entropy({"m": model}, PROMPTS[:1], tokenizer=build_tokenizer())
    from_folder = attention_entropy({"m": tiny_model_dir}, PROMPTS[:1])
    np.testing.assert_allclose(from_object["entropy"], from_folder["entropy"], rtol=1e-6)


def test_bad_arguments(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match=r"has layers 0..1, got \[5\]"):
        attention_entropy(tiny_model_dir, PROMPTS, layers=[0, 5])
    with pytest.raises(ValueError, match="at least 1 prompt"):
        attention_entropy(tiny_model_dir, [])
    with pytest.raises(ValueError, match="prompt 1 must be a non-empty string"):
        attention_entropy(tiny_model_dir, ["ok", "  "])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        attention_entropy(tmp_path / "missing", PROMPTS)
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        attention_entropy(tmp_path, PROMPTS)
    with pytest.raises(ValueError, match="empty mapping"):
        attention_entropy({}, PROMPTS)


def test_plots():
    table = pd.DataFrame({"model": ["a"] * 4 + ["b"] * 4, "layer": [0, 0, 1, 1] * 2, "head": [0, 1] * 4,
                          "entropy": [1.0, 1.2, 2.0, 2.2, 1.1, 1.3, 2.1, 2.3]})
    fig = plot_attention_entropy(table)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["a", "b"]
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [1.1, 2.1])
    heat = plot_attention_entropy(table, kind="heatmap")
    assert len(heat.axes) == 3  # two panels and a colour bar
    with pytest.raises(ValueError, match="kind: expected"):
        plot_attention_entropy(table, kind="bars")
    with pytest.raises(ValueError, match="expected a DataFrame with columns"):
        plot_attention_entropy(table.drop(columns="entropy"))

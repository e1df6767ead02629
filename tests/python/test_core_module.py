"""The compiled module's interface: python/postsvd/_core.pyi describes it exactly (the same names,
the same members per class, the same parameters per function), every binding that takes a device
or a precision reads it by the same rule, and the CUDA probes agree with one another and the build."""
import ast
import builtins
from pathlib import Path

import numpy as np
import pytest

import postsvd
from postsvd import _core

STUB = Path(__file__).resolve().parents[2] / "python" / "postsvd" / "_core.pyi"


def _stub_tree():
    return ast.parse(STUB.read_text(), filename=str(STUB))


def _stub_parameters(node):
    """[(name, has_default)] of a stub function, `self` left out."""
    args = node.args
    positional = args.posonlyargs + args.args
    defaults = [False] * (len(positional) - len(args.defaults)) + [True] * len(args.defaults)
    out = [(a.arg, d) for a, d in zip(positional, defaults)]
    out += [(a.arg, d is not None) for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    return [p for p in out if p[0] != "self"]


def _split_top_level(text):
    """Splits on commas outside brackets and quotes."""
    parts, depth, quote, current = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += ch
    if current.strip():
        parts.append(current)
    return parts


def _bound_parameters(function):
    """[(name, has_default)] from pybind11's signature line, `self` left out."""
    line = (function.__doc__ or "").strip().splitlines()[0]
    inner = line[line.index("(") + 1:line.rindex(")")]
    out = []
    for part in _split_top_level(inner):
        name = part.split(":")[0].split("=")[0].strip()
        if name and name != "self":
            out.append((name, "=" in part))
    return out


def _public(names):
    return {n for n in names if not n.startswith("_")}


def test_parser_reads_pybind11_signatures():
    # The helper itself: a default holding a comma and a bracket stays one parameter.
    assert _split_top_level("a: int, b: list[int] = [1, 2], c: str = 'x,y'") == [
        "a: int", " b: list[int] = [1, 2]", " c: str = 'x,y'"]
    assert _bound_parameters(_core.svd)[0] == ("array", False)


def test_stub_names_are_the_module_names():
    tree = _stub_tree()
    stub = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    # Module constants (SHARED_EXPERT: int) are annotated names in the stub.
    stub |= {n.target.id for n in tree.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    module = _public(dir(_core))
    assert stub - module == set(), "in _core.pyi but not in the module"
    assert module - stub == set(), "in the module but missing from _core.pyi"


def test_stub_exception_bases_match():
    for node in _stub_tree().body:
        if isinstance(node, ast.ClassDef) and node.bases:
            bases = tuple(getattr(_core, b.id, None) or getattr(builtins, b.id) for b in node.bases)
            assert getattr(_core, node.name).__bases__ == bases, node.name


@pytest.mark.parametrize("node", [n for n in _stub_tree().body if isinstance(n, ast.ClassDef) and not n.bases],
                         ids=lambda n: n.name)
def test_stub_class_members_match(node):
    cls = getattr(_core, node.name)
    stub_members = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
    bound = set(vars(cls))
    assert _public(stub_members) == _public(bound), f"{node.name}: public members differ"
    for dunder in stub_members - _public(stub_members):
        assert dunder in bound, f"{node.name}.{dunder} is in the stub but not bound"
    for member in node.body:
        if not isinstance(member, ast.FunctionDef):
            continue
        is_property = any(isinstance(d, ast.Name) and d.id == "property" for d in member.decorator_list)
        attribute = vars(cls)[member.name]
        assert isinstance(attribute, property) == is_property, f"{node.name}.{member.name}: property or not"
        if not is_property and member.name != "__repr__":
            assert _stub_parameters(member) == _bound_parameters(attribute), f"{node.name}.{member.name}"


@pytest.mark.parametrize("node", [n for n in _stub_tree().body if isinstance(n, ast.FunctionDef)],
                         ids=lambda n: n.name)
def test_stub_function_parameters_match(node):
    assert _stub_parameters(node) == _bound_parameters(getattr(_core, node.name))


# ---------------------------------------------------------------- one rule per conversion

def _device_and_precision_callers(folder_pair, tmp_path):
    """Each binding that takes a device and a precision, as f(device, precision) -> what it computed, in a form
    that compares with == (numbers the working precision changes, and the dtype of returned arrays)."""
    w = np.array([[3.0, 1.0, 0.5], [1.0, 2.0, 0.25], [0.5, 0.25, 1.0]]) + 1e-9  # 1e-9: lost in float32
    base, post = str(folder_pair.base), str(folder_pair.post)

    def spectrum(factors):
        return factors[1].dtype.name, factors[1].tolist()

    def comparison(comparator):
        return comparator.precision, [(r["sigma_base"].tolist(), r["sigma_post"].tolist())
                                      for r in comparator.compare([0])]

    def construction(d, p):
        out = tmp_path / f"out-{d}-{p}"
        out.mkdir(exist_ok=True)
        report = _core.construct_checkpoint(14, base, post, str(out), layers=[0], kinds=["q"], precision=p, device=d)
        return [row["relative_change"] for row in report["rows"]]

    return {
        "svd": lambda d, p: spectrum(_core.svd(w, precision=p, device=d)),
        "Backend": lambda d, p: spectrum(_core.Backend(d).svd(w, p)),
        "Comparator": lambda d, p: comparison(_core.Comparator(base, post, device=d, precision=p)),
        "default_alpha": lambda d, p: _core.default_alpha(base, post, layers=[0], kinds=["q"], precision=p,
                                                          device=d)["pooled_mean"],
        "construct_checkpoint": construction,
    }


_PRECISIONS = dict(_core.precisions())


@pytest.mark.parametrize("spelling", [s for spellings in _PRECISIONS.values() for s in spellings])
def test_every_binding_computes_in_the_precision_each_spelling_names(related_pair, tmp_path, spelling):
    """Each spelling gives exactly what its precision's name gives, and not what the other precision gives
    (float32 and float64 differ in every result here: the arrays' dtype, the last bits of every value)."""
    name = next(n for n, spellings in _PRECISIONS.items() if spelling in spellings)
    other = next(n for n in _PRECISIONS if n != name)
    for binding, call in _device_and_precision_callers(related_pair, tmp_path).items():
        got = call("cpu", spelling)
        assert got == call("cpu", name), binding
        assert got != call("cpu", other), binding
        if binding in ("svd", "Backend"):
            assert got[0] == name, binding  # the singular values' dtype


def test_every_binding_rejects_the_same_bad_device_and_precision(related_pair, tmp_path):
    for name, call in _device_and_precision_callers(related_pair, tmp_path).items():
        with pytest.raises(postsvd.InvalidArgumentError, match='precision: expected "float32" or "float64", got "half"'):
            call("cpu", "half")
        with pytest.raises(postsvd.InvalidArgumentError, match='device: expected "cpu" or "cuda", got "tpu"'):
            call("tpu", "float32")


def test_every_binding_checks_threads_the_same_way(related_pair):
    base, post = str(related_pair.base), str(related_pair.post)
    for call in (lambda: _core.Backend("cpu", [], 0, -1),
                 lambda: _core.Comparator(base, post, num_threads=-1),
                 lambda: _core.default_alpha(base, post, num_threads=-1)):
        with pytest.raises(postsvd.InvalidArgumentError, match="num_threads: expected >= 0"):
            call()


# ---------------------------------------------------------------- CUDA probes

def test_build_info_cuda_part_agrees_with_the_probes():
    cuda = _core.build_info().partition("; CUDA: ")[2]
    if _core.built_with_cuda():
        count = _core.cuda_device_count()
        assert cuda.startswith("CUDA "), cuda
        assert f", {count} device{'' if count == 1 else 's'}" in cuda, cuda
        assert _core.has_cuda() == (count > 0)
    else:
        assert cuda.startswith("not built"), cuda
        assert _core.cuda_device_count() == 0 and _core.has_cuda() is False


@pytest.mark.skipif(_core.cuda_device_count() > 0, reason="for machines without a CUDA device")
def test_without_a_device_every_cuda_request_fails_with_the_builds_error(related_pair, tmp_path):
    assert _core.has_cuda() is False
    expected = postsvd.BackendError if _core.built_with_cuda() else postsvd.NotBuiltWithCudaError
    for name, call in _device_and_precision_callers(related_pair, tmp_path).items():
        with pytest.raises(expected) as info:
            call("cuda", "float32")
        assert type(info.value) is expected, name

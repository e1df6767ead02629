"""A call that needs a package of a missing extra says which extra to install; the extras in
pyproject.toml bring what postsvd._extras says they bring; the GPU wheel's generated metadata.

A missing package is simulated with ``sys.modules[name] = None`` (import then raises
ModuleNotFoundError), so these run where every extra is installed."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

import postsvd
from postsvd import _extras, distributed, functional
from postsvd.functional import _models, benchmarks

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONAL = "pip install 'postsvd[functional]'"


def hide(monkeypatch, *modules):
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def test_require_names_the_feature_the_package_and_the_extra(monkeypatch):
    hide(monkeypatch, "torch")
    with pytest.raises(ImportError) as info:
        _extras.require("torch", "attention_entropy")
    message = str(info.value)
    assert "attention_entropy needs torch" in message and message.endswith(FUNCTIONAL), message
    assert isinstance(info.value.__cause__, ImportError)


def test_require_rejects_a_module_of_no_extra():
    with pytest.raises(ValueError, match="'scipy'"):
        _extras.require("scipy", "x")


def test_entropy_without_torch_says_install_functional(monkeypatch):
    hide(monkeypatch, "torch")
    with pytest.raises(ImportError, match=r"entropy_of_attention needs torch.*postsvd\[functional\]"):
        functional.entropy_of_attention(np.full((1, 2, 2), 0.5))


def test_loading_a_model_without_transformers_says_install_functional(monkeypatch, tmp_path):
    hide(monkeypatch, "transformers")
    with pytest.raises(ImportError, match=r"loading a model needs transformers.*postsvd\[functional\]"):
        _models.load_model_and_tokenizer(str(tmp_path))


def test_cka_without_torch_says_install_functional(monkeypatch):
    hide(monkeypatch, "torch")
    with pytest.raises(ImportError, match=r"layer_representations needs torch.*postsvd\[functional\]"):
        functional.layer_representations("model/", ["a", "b"])


def test_benchmarks_without_lm_eval_say_install_functional(monkeypatch):
    hide(monkeypatch, "lm_eval")
    with pytest.raises(ImportError, match=r"benchmark evaluation .*needs lm_eval.*postsvd\[functional\]"):
        benchmarks.run_benchmarks({"m": "model/"}, tasks=["gsm8k"])


def test_ray_without_ray_says_install_ray(monkeypatch, related_pair):
    hide(monkeypatch, "ray")
    with pytest.raises(ImportError, match=r"executor='ray' needs ray.*pip install 'postsvd\[ray\]'"):
        distributed.import_ray()
    with pytest.raises(ImportError, match=r"postsvd\[ray\]"):
        postsvd.compare(related_pair.base, related_pair.post, executor="ray", progress=False)


def test_bfloat16_examples_without_torch_say_install_functional(monkeypatch, tmp_path):
    hide(monkeypatch, "torch")
    with pytest.raises(postsvd.InvalidArgumentError, match=r"postsvd\[functional\].*dtype='float16'"):
        postsvd.synthetic.make_pair(tmp_path / "b", tmp_path / "p", dtype="bfloat16", layers=1, hidden=8,
                                    intermediate=16, heads=2, kv_heads=1)


def _pyproject():
    path = ROOT / "pyproject.toml"
    if not path.exists():
        pytest.skip("no pyproject.toml beside the tests")
    tomllib = pytest.importorskip("tomllib", reason="reads pyproject.toml with tomllib (Python 3.11)")
    return tomllib.loads(path.read_text()), path.read_text()


def test_each_optional_module_is_brought_by_the_extra_named_for_it():
    project = _pyproject()[0]["project"]
    extras = project["optional-dependencies"]
    distribution = {"torch": "torch", "transformers": "transformers", "lm_eval": "lm-eval",
                    "accelerate": "accelerate", "ray": "ray", "plotly": "plotly"}
    assert set(distribution) == set(_extras.EXTRA_OF_MODULE)
    for module, extra in _extras.EXTRA_OF_MODULE.items():
        names = [r.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip() for r in extras[extra]]
        assert distribution[module] in names, (module, extra, extras[extra])
    assert set(extras["all"][0].split("[", 1)[1].rstrip("]").split(",")) == {"functional", "notebooks", "ray",
                                                                                   "interactive"}
    core = {r.split(">")[0] for r in project["dependencies"]}
    assert core == {"numpy", "pandas", "matplotlib", "tqdm", "safetensors", "scipy", "huggingface_hub"}, core


def _build_wheel_script():
    path = ROOT / "scripts" / "build_wheel.py"
    if not path.exists():
        pytest.skip("no scripts/build_wheel.py beside the tests")
    spec = importlib.util.spec_from_file_location("build_wheel", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gpu_wheel_metadata_names_postsvd_cu13_and_pins_the_toolkit_libraries():
    script = _build_wheel_script()
    tomllib = pytest.importorskip("tomllib", reason="reads pyproject.toml with tomllib (Python 3.11)")
    versions = {"nvidia-cuda-runtime": "13.0.96", "nvidia-cublas": "13.1.0.3", "nvidia-cusolver": "12.0.4.66",
                "nvidia-cusparse": "12.6.3.3", "nvidia-nvjitlink": "13.0.88"}
    requirements = script.cuda_requirements(versions)
    assert "nvidia-cusolver>=12.0.4.66,<13" in requirements and "nvidia-cublas>=13.1.0.3,<14" in requirements
    generated = tomllib.loads(script.gpu_pyproject(_pyproject()[1], "13", requirements))
    project = generated["project"]
    assert project["name"] == "postsvd-cu13"
    assert set(requirements) <= set(project["dependencies"]) and "numpy>=1.24" in project["dependencies"]
    assert project["optional-dependencies"]["all"] == ["postsvd-cu13[functional,notebooks,ray,interactive]"]
    assert generated["tool"]["scikit-build"]["cmake"]["define"]["POSTSVD_ENABLE_CUDA"] == "ON"


def test_the_gpu_wheel_pins_come_from_the_toolkit(tmp_path):
    script = _build_wheel_script()
    (tmp_path / "version.json").write_text('{"cuda_cudart": {"version": "13.0.96"}, "libcublas": {"version": '
                                           '"13.1.0.3"}, "libcusolver": {"version": "12.0.4.66"}}')
    dist = tmp_path / "dist-info"
    for name in ("nvidia_cusparse-12.6.3.3.dist-info", "nvidia_nvjitlink-13.0.88.dist-info"):
        (dist / name).mkdir(parents=True)
    assert script.toolkit_versions(tmp_path)["nvidia-nvjitlink"] == "13.0.88"
    (dist / "nvidia_nvjitlink-13.0.88.dist-info").rmdir()
    with pytest.raises(SystemExit, match="nvidia-nvjitlink"):
        script.toolkit_versions(tmp_path)

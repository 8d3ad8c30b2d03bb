"""Deploying a Keras model with a G-CRF head: ``model.export()`` (a SavedModel) served from a
fresh process that does not import lowrank_gcrf, TFLite conversion with builtin operations
only run by the TFLite interpreter, and XLA (``jit_compile=True``) inference
(``docs/guide/deploying.md``).

Each route's output is compared with the eager model's, which runs the core's exact solve:
within 1e-4 relative (float32; the traceable solve's own error is about ε·κ, κ ≤ 190 for
the layers' strength ceiling, see ``tests/test_traceable_solve.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from lowrank_gcrf.adapters.tensorflow import DenseGCRF, GCRFHead  # noqa: E402

MODELS = ["potts", "general"]
#: The issue's target for exported scores against the eager ones, float32.
RTOL = 1e-4
#: The TFLite interpreter: LiteRT's where installed, else TensorFlow's (deprecated, present
#: in TensorFlow 2.21); the two share one API.
INTERPRETER = """
try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:
    import tensorflow as tf
    Interpreter = tf.lite.Interpreter
"""


def relative_error(x, reference) -> float:
    x, reference = np.asarray(x, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    return float(np.linalg.norm(x - reference) / np.linalg.norm(reference))


def model_and_features(model: str):
    """A small Keras model around a head, with a non-initial strength, and features."""
    keras.utils.set_random_seed(0)
    features = keras.Input((5, 6, 8), name="features")
    head = GCRFHead(3, embed_dim=4, model=model, data_format="channels_last")
    network = keras.Model(features, head(features))
    head.crf.raw_strength.assign(tf.fill(head.crf.raw_strength.shape, 2.0))
    return network, np.random.default_rng(0).standard_normal((2, 5, 6, 8)).astype("float32")


def run_fresh(script: str, then: str) -> dict:
    """Run ``script`` in a fresh Python process, check that it did not import lowrank_gcrf,
    then run ``then``, which prints one JSON line, returned here."""
    code = "import json, sys\n" + script + "assert 'lowrank_gcrf' not in sys.modules\n" + then
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each model exported as a SavedModel and converted to TFLite builtins, with its eager
    output; both files run in one fresh process that does not import lowrank_gcrf, which
    then loads the Potts model's ``.keras`` file, first without importing it."""
    folder = tmp_path_factory.mktemp("tf_export")
    cases = {}
    for model in MODELS:
        network, features = model_and_features(model)
        saved = folder / model
        network.export(str(saved), verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        (folder / f"{model}.tflite").write_bytes(converter.convert())
        np.save(folder / f"{model}_features.npy", features)
        cases[model] = {"eager": network(features).numpy(), "network": network}
    cases["potts"]["network"].save(folder / "potts.keras")
    served = run_fresh(
        INTERPRETER
        + f"""
import numpy as np, tensorflow as tf
out = {{}}
for model in {MODELS!r}:
    features = np.load(r"{folder}/" + model + "_features.npy")
    served = tf.saved_model.load(r"{folder}/" + model)
    out[model + "/saved_model"] = served.serve(features).numpy().tolist()
    interpreter = Interpreter(model_path=r"{folder}/" + model + ".tflite")
    run = interpreter.get_signature_runner("serving_default")
    out[model + "/tflite"] = next(iter(run(features=features).values())).tolist()
    out[model + "/tflite_ops"] = sorted({{op["op_name"] for op in interpreter._get_ops_details()}})
""",
        f"""
import keras
try:
    keras.saving.load_model(r"{folder}/potts.keras")
except Exception as error:
    out["keras_refused"] = str(error)
import lowrank_gcrf.adapters.tensorflow
model = keras.saving.load_model(r"{folder}/potts.keras")
out["keras"] = model(np.load(r"{folder}/potts_features.npy")).numpy().tolist()
print(json.dumps(out))
""",
    )
    for model in MODELS:
        for route in ("saved_model", "tflite", "tflite_ops"):
            cases[model][route] = served[f"{model}/{route}"]
    cases["keras"], cases["keras_refused"] = served["keras"], served.get("keras_refused", "")
    return cases


@pytest.mark.parametrize("model", MODELS)
def test_saved_model_served_without_lowrank_gcrf(exported, model):
    case = exported[model]
    assert relative_error(case["saved_model"], case["eager"]) <= RTOL


@pytest.mark.parametrize("model", MODELS)
def test_tflite_builtins_run_by_interpreter(exported, model):
    """Converted with TFLITE_BUILTINS only (the converter raises on any other operation)."""
    case = exported[model]
    assert "BATCH_MATMUL" in case["tflite_ops"]
    assert relative_error(case["tflite"], case["eager"]) <= RTOL


def test_keras_file_loads_after_importing_the_adapter(exported):
    """A ``.keras`` file names the head's class, which Keras finds only once
    ``lowrank_gcrf.adapters.tensorflow`` is imported (it registers the layers): without the
    import loading fails with Keras' own message; with it the model gives the eager scores."""
    assert "Could not locate class 'GCRFHead'" in exported["keras_refused"]
    assert relative_error(exported["keras"], exported["potts"]["eager"]) <= RTOL


@pytest.mark.parametrize("model", MODELS)
def test_xla_inference(exported, model):
    network = exported[model]["network"]
    features = np.random.default_rng(0).standard_normal((2, 5, 6, 8)).astype("float32")
    compiled = tf.function(lambda x: network(x, training=False), jit_compile=True)
    assert relative_error(compiled(features), exported[model]["eager"]) <= RTOL


def test_signed_layer_xla_inference():
    """The signed model's traceable solve compiles with XLA and matches the eager layer."""
    keras.utils.set_random_seed(0)
    crf = DenseGCRF(model="signed", attractive_dim=2, data_format="channels_last")
    rng = np.random.default_rng(1)
    unary = rng.standard_normal((2, 5, 6, 3)).astype("float32")
    embeddings = rng.standard_normal((2, 5, 6, 5, 3)).astype("float32")  # D + E = 5
    crf.raw_strength.assign(tf.fill(crf.raw_strength.shape, 2.0))
    eager = crf(unary, embeddings).numpy()
    compiled = tf.function(lambda u, e: crf(u, e, training=False), jit_compile=True)
    assert relative_error(compiled(unary, embeddings), eager) <= RTOL


def test_fit_runs_the_core_solve_and_predict_the_traceable_one(monkeypatch):
    """Keras training (graph mode, training=True) keeps the core's exact solve and its
    gradients; predict (graph mode, training=False) runs the traceable solve."""
    from lowrank_gcrf.adapters.tensorflow import layers

    calls: list[str] = []
    for name, label in [("traceable_solve", "traceable"), ("solve_tensors", "core")]:
        original = getattr(layers, name)

        def spy(*args, _original=original, _label=label, **kwargs):
            calls.append(_label)  # once per trace: the spies run while tracing
            return _original(*args, **kwargs)

        monkeypatch.setattr(layers, name, spy)
    model, features = model_and_features("potts")
    labels = np.zeros(model.output_shape[1:-1], dtype="int64")[None].repeat(len(features), 0)
    model.compile(keras.optimizers.SGD(1e-3), keras.losses.SparseCategoricalCrossentropy(True))
    model.fit(features, labels, epochs=1, verbose=0)
    assert set(calls) == {"core"}
    calls.clear()
    model.predict(features, verbose=0)
    assert set(calls) == {"traceable"}

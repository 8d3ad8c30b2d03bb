"""One Keras training step with the G-CRF layer, under MirroredStrategy over 2 logical CPUs
and on a single device, from the same initial weights; prints the largest weight difference.

Run as a subprocess by tests/test_tensorflow_adapter.py: logical devices must be configured
before TensorFlow initialises its devices, which the test process has already done.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

from lowrank_gcrf.adapters.tensorflow import DenseGCRF  # noqa: E402

L, D, H, W = 3, 2, 4, 4


def build() -> keras.Model:
    keras.utils.set_random_seed(0)
    images = keras.Input((H, W, 2))  # channels last: CPU kernels lack NCHW conv gradients
    unary = keras.layers.Conv2D(L, 1)(images)
    embeddings = keras.layers.Reshape((H, W, D, L))(keras.layers.Conv2D(D * L, 1)(images))
    scores = DenseGCRF(lam=1.0, model="general", learn_lam=True, method="direct")(unary, embeddings)
    model = keras.Model(images, scores)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, H, W, 2)).astype("float32")
    y = rng.standard_normal((8, H, W, L)).astype("float32")
    single = build()
    initial = [w.copy() for w in single.get_weights()]
    single.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = build()
    assert all(np.array_equal(a, b) for a, b in zip(initial, mirrored.get_weights(), strict=True))
    mirrored.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    diffs = [
        float(np.abs(a - b).max())
        for a, b in zip(single.get_weights(), mirrored.get_weights(), strict=True)
    ]
    moved = [float(np.abs(a - b).max()) for a, b in zip(single.get_weights(), initial, strict=True)]
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "diff": diffs, "moved": moved}))


if __name__ == "__main__":
    main()

"""Framework adapters: the G-CRF solve as a PyTorch autograd function / module and as a
TensorFlow custom-gradient op / Keras layer. Installed as ``lowrank_gcrf.adapters``.

They move tensors to the core by DLPack (CPU → NumPy, CUDA → CuPy) and back and hold no
maths of their own; import ``lowrank_gcrf.adapters.torch`` or
``lowrank_gcrf.adapters.tensorflow`` explicitly (each needs its framework installed).
"""

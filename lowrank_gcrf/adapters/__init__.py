"""Framework adapters: the G-CRF solve as a PyTorch autograd function and modules, and as a
TensorFlow custom-gradient op and Keras layers.

Three layers, so that a new model or framework touches one place:

* :mod:`~lowrank_gcrf.adapters.bridge`: the one door to the core (DLPack hand-over, dtype
  policy, λ and solver keywords, the forward/backward state of a solve);
* :mod:`~lowrank_gcrf.adapters.layer_plan`: everything a layer decides that is not a tensor
  operation (the per-model table, shapes, settings, heads, the solve plan of a call);
* :mod:`lowrank_gcrf.adapters.torch` and :mod:`lowrank_gcrf.adapters.tensorflow`: the tensor
  operations, split by role (the autograd function or custom-gradient op, functional solves,
  layers, heads, ``refine``); they hold no model branches and no maths of their own.

Import ``lowrank_gcrf.adapters.torch`` or ``lowrank_gcrf.adapters.tensorflow`` explicitly
(each needs its framework installed).
"""

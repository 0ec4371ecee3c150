"""Splitting a model's parameters into weight-decay and no-decay groups.

The PReLU paper updates the slopes a with momentum but *no weight decay* ("decay pushes a to
0"); common practice also exempts biases and batch-norm scales/shifts. ``decay_groups`` returns
two param groups for any optimizer::

    opt = SGD(decay_groups(model, 5e-4), lr=0.01, momentum=0.9)
"""
import fnmatch

BATCHNORM = "batchnorm"


def _matches(entry, module, local_name, dotted_name):
    e = entry.lower()
    for cls in type(module).__mro__:  # a subclass of PReLU is a PReLU
        type_name = cls.__name__.lower()
        if type_name == e or (e == BATCHNORM and type_name.startswith(BATCHNORM)):
            return True
    if local_name == entry:
        return True
    return fnmatch.fnmatchcase(dotted_name, entry)


def decay_groups(model, weight_decay, no_decay=("prelu",), exempt_bias=False, exempt_norm=False,
                 **group_options):
    """``[{"params": decayed, "weight_decay": weight_decay}, {"params": exempt,
    "weight_decay": 0.0}]`` for ``model`` (both groups always present, possibly empty; within
    each, parameters in the model's registration order).

    A parameter is exempt when an entry of ``no_decay`` matches it. An entry matches

    * the type of the module that owns the parameter (or a base class of it),
      case-insensitively: ``"prelu"`` (PReLU slopes), ``"batchnorm"`` (any BatchNorm1d/2d),
      ``"linear"``, a class name of your own;
    * or the parameter's own name in its module: ``"bias"``, ``"weight"``;
    * or, as an ``fnmatch`` pattern, its dotted name in the model: ``"fc*.bias"``.

    ``exempt_bias=True`` adds ``"bias"``, ``exempt_norm=True`` adds ``"batchnorm"``.
    ``group_options`` (e.g. ``lr=...``) are copied into both groups. A parameter shared between
    modules is classified by its first owner; frozen parameters are included, as in
    ``model.parameters()`` (they have no gradient, so SGD skips them).
    """
    entries = list(no_decay) if not isinstance(no_decay, str) else [no_decay]
    if exempt_bias:
        entries.append("bias")
    if exempt_norm:
        entries.append(BATCHNORM)
    decay, exempt, seen = [], [], set()
    for mname, m in model.named_modules():
        for n, p in m._parameters.items():
            if p is None or id(p) in seen:
                continue
            seen.add(id(p))
            dotted = f"{mname}.{n}" if mname else n
            if any(_matches(e, m, n, dotted) for e in entries):
                exempt.append(p)
            else:
                decay.append(p)
    return [dict(group_options, params=decay, weight_decay=float(weight_decay)),
            dict(group_options, params=exempt, weight_decay=0.0)]

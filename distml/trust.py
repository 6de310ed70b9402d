"""What a saved model may contain: the exact types distml writes, checked before skops builds anything.

skops trusts every scikit-learn estimator by default and, asked to trust a
type, trusts it wherever it appears; a prefix such as ``numpy.`` would admit
callables (``numpy.testing``'s ``runstring``) that a crafted file calls at
load time. So a model file is read as data first: every node of its schema
must be one of the node kinds below and name one of the types below, by full
name, and only then does skops load it, trusting just the types it reports.
"""
from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from typing import Any

from distml.errors import StoreError

#: The estimators and transformers the families and feature plans save (``tests/test_trust.py``
#: saves every one of them and checks this set against what the files hold).
SAVED_ESTIMATORS = frozenset({
    "sklearn.pipeline.Pipeline",
    "sklearn.compose._column_transformer.ColumnTransformer",
    "sklearn.impute._base.SimpleImputer",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.preprocessing._encoders.OneHotEncoder",
    "sklearn.preprocessing._encoders.OrdinalEncoder",
    "sklearn.linear_model._base.LinearRegression",
    "sklearn.linear_model._ridge.Ridge",
    "sklearn.linear_model._stochastic_gradient.SGDRegressor",
    "sklearn.linear_model._stochastic_gradient.SGDClassifier",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.svm._classes.SVC",
    "sklearn.multiclass.OneVsOneClassifier",
    "sklearn.kernel_approximation.Nystroem",
    "sklearn.kernel_approximation.RBFSampler",
    "sklearn.ensemble._forest.RandomForestClassifier",
    "sklearn.ensemble._forest.RandomForestRegressor",
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._classes.DecisionTreeRegressor",
})

#: scikit-learn's compiled internals those estimators hold: a tree's arrays, SGD's loss objects.
SKLEARN_INTERNALS = frozenset({
    "sklearn.tree._tree.Tree",
    "sklearn.linear_model._sgd_fast.Hinge",
    "sklearn.linear_model._sgd_fast.SquaredHinge",
    "sklearn._loss._loss.CyHalfBinomialLoss",
    "sklearn._loss._loss.CyHalfSquaredError",
})

#: numpy's array and dtype machinery, by exact name (no ``numpy.`` module prefix).
NUMPY_TYPES = frozenset({
    "numpy.ndarray", "numpy.dtype", "numpy.bool", "numpy.str_",
    "numpy.int8", "numpy.int16", "numpy.int32", "numpy.int64",
    "numpy.uint8", "numpy.uint16", "numpy.uint32", "numpy.uint64",
    "numpy.float16", "numpy.float32", "numpy.float64",
})

#: Plain values and containers.
BUILTIN_TYPES = frozenset({
    "builtins.dict", "builtins.list", "builtins.tuple", "builtins.slice",
    "builtins.str", "builtins.int", "builtins.float", "builtins.bool",
})

ALLOWED_TYPES = SAVED_ESTIMATORS | SKLEARN_INTERNALS | NUMPY_TYPES | BUILTIN_TYPES

#: skops node kinds that build an object from data. Left out on purpose: FunctionNode, MethodNode,
#: PartialNode, OperatorFuncNode and ConstructorFromReduceNode call what the file names; ReduceNode
#: calls a constructor with arguments from the file; Set/Bytes/RandomState nodes are never written.
ALLOWED_NODES = frozenset({
    "DictNode", "ListNode", "TupleNode", "SliceNode", "JsonNode", "TypeNode", "CachedNode",
    "NdArrayNode", "DTypeNode", "ObjectNode", "TreeNode", "LossNode",
})


def schema_nodes(tree: Any) -> Iterator[dict[str, Any]]:
    """Every node of a skops schema, wherever it is nested (content, args, keys, items)."""
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "__loader__" in item:
                yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def check_model_file(payload: bytes, where: str) -> list[str]:
    """Refuse a model file holding anything but the allowed nodes and types; return the types to trust.

    Nothing is imported or constructed: the schema is read as JSON, then skops'
    own audit (``get_untrusted_types``) must agree that only allowed types remain.
    """
    from distml.skops_io import skops_io

    sio = skops_io()

    try:
        with zipfile.ZipFile(io.BytesIO(payload)) as archive:
            schema = json.loads(archive.read("schema.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, UnicodeDecodeError):
        raise StoreError(f"{where}: not a skops model file (expected a zip archive with a schema.json)") from None
    for node in schema_nodes(schema):
        loader, name = node.get("__loader__"), f"{node.get('__module__')}.{node.get('__class__')}"
        if loader not in ALLOWED_NODES:
            raise StoreError(f"{where}: refusing to load: {name} is stored by a {loader} node, "
                             "which would call code named by the file")
        if name not in ALLOWED_TYPES:
            raise StoreError(f"{where}: refusing to load untrusted type {name}")
    try:
        untrusted = sio.get_untrusted_types(data=payload)
    except Exception as exc:
        raise StoreError(f"{where}: not a readable skops model file ({type(exc).__name__})") from None
    refused = sorted(set(untrusted) - ALLOWED_TYPES)
    if refused:
        raise StoreError(f"{where}: refusing to load untrusted type {', '.join(refused)}")
    return untrusted

"""A plugin that registers cleanly but whose factories return strings: core must refuse what they build.

``metalab_testplugins.string_dataset``'s factory returns a string instead of a ClassificationDataset, and
``metalab_testplugins.string_algorithm``'s returns a string instead of an Algorithm.
"""

from metalab.api import AlgorithmSpec, DatasetSpec, Params, hookimpl

METALAB_PLUGIN_API = "1.0"


class NoParams(Params):
    pass


def make_string_dataset(params, context):
    return "not a dataset"


def make_string_algorithm(params, task):
    return "not an algorithm"


@hookimpl
def metalab_register_datasets():
    return [
        DatasetSpec(
            id="metalab_testplugins.string_dataset",
            title="String dataset (broken on purpose)",
            description="Its factory returns a string instead of a ClassificationDataset.",
            params=NoParams,
            factory=make_string_dataset,
            kind="classification",
            default_backbone="metalab.mlp",
            episode_defaults={"ways": 2, "shots": 1, "queries": 1},
        )
    ]


@hookimpl
def metalab_register_algorithms():
    return [
        AlgorithmSpec(
            id="metalab_testplugins.string_algorithm",
            title="String algorithm (broken on purpose)",
            description="Its factory returns a string instead of an Algorithm.",
            params=NoParams,
            factory=make_string_algorithm,
        )
    ]

"""A plugin for a future metalab: it targets plugin API 2.0, so this metalab (1.x) must refuse it."""

from metalab.api import DatasetSpec, Params, hookimpl

METALAB_PLUGIN_API = "2.0"


class NoParams(Params):
    pass


def make_nothing(params, context):
    raise NotImplementedError("future_api never loads, so nothing calls this")


@hookimpl
def metalab_register_datasets():
    return [
        DatasetSpec(
            id="metalab_testplugins.future",
            title="Future",
            description="A valid dataset spec from a plugin targeting plugin API 2.0.",
            params=NoParams,
            factory=make_nothing,
            kind="regression",
        )
    ]

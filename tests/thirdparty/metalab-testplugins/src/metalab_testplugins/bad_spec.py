"""A broken plugin: it returns an algorithm spec whose id is not '<plugin>.<name>'."""

from metalab.api import AlgorithmSpec, Params, hookimpl

METALAB_PLUGIN_API = "1.0"


class NoParams(Params):
    pass


def make_nothing(params, task):
    raise NotImplementedError("bad_spec never loads, so nothing calls this")


@hookimpl
def metalab_register_algorithms():
    return [
        AlgorithmSpec(
            id="Not An Id",
            title="Bad spec",
            description="An algorithm spec with an invalid id.",
            params=NoParams,
            factory=make_nothing,
        )
    ]

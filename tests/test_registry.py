"""The method registry: built-ins, entry-point plugins, names users type."""

import sys
import textwrap

import pytest

from benchmark import registry
from benchmark.cli import main
from benchmark.method import SSLMethod
from benchmark.registry import UnknownMethodError, available_methods, get_method, register_method


def test_builtin_methods_are_registered_with_summary_and_reference():
    methods = available_methods()
    assert {"scratch", "simclr"} <= set(methods)
    for name, cls in methods.items():
        assert cls.name == name
        assert cls.summary(), f"{name} needs a docstring"


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(
        UnknownMethodError, match="unknown method 'simclear'; known methods: .*simclr"
    ):
        get_method("simclear")


def test_a_name_cannot_be_registered_by_two_classes(monkeypatch):
    monkeypatch.setattr(registry, "METHODS", registry.METHODS.copy())

    class First(SSLMethod):
        """first"""

    class Second(SSLMethod):
        """second"""

    register_method("twice_for_test")(First)
    with pytest.raises(ValueError, match="registered twice"):
        register_method("twice_for_test")(Second)


def test_entry_point_plugins_are_discovered(tmp_path, monkeypatch):
    package = tmp_path / "my_ssl_plugin"
    package.mkdir()
    (package / "__init__.py").write_text(
        textwrap.dedent(
            '''
            from benchmark.method import SSLMethod

            class Rotations(SSLMethod):
                """An external plugin registered through the ssl3d.methods entry points."""
            '''
        )
    )
    info = tmp_path / "my_ssl_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-ssl-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[ssl3d.methods]\nrotations = my_ssl_plugin:Rotations\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    methods = registry.METHODS.copy()
    methods.discovered = False
    monkeypatch.setattr(registry, "METHODS", methods)
    try:
        assert get_method("rotations").summary().startswith("An external plugin")
    finally:
        sys.modules.pop("my_ssl_plugin", None)


def test_methods_command_prints_names_and_references(capsys):
    main(["methods"])
    printed = capsys.readouterr().out
    assert "simclr" in printed and "Chen et al." in printed and "scratch" in printed

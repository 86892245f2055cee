"""The package ships the PEP 561 ``py.typed`` marker, so type checkers read the hints of an installed
copy (without it, mypy and pyright treat flowrl_deploy as untyped)."""

import importlib.resources

import test_packaging

wheel = test_packaging.wheel  # the wheel built from this checkout


def test_the_wheel_ships_py_typed_for_the_whole_namespace(wheel):
    assert "flowrl_deploy/py.typed" in wheel.namelist()


def test_the_installed_package_has_py_typed():
    assert importlib.resources.files("flowrl_deploy").joinpath("py.typed").is_file()

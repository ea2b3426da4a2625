"""The CPU kernel's cache entry (its extension name) changes with whatever changes its build:
two environments (virtualenvs, checkouts) sharing ``TORCH_EXTENSIONS_DIR`` get two entries
instead of rebuilding one in turn. No build needed: only the name is computed."""

from __future__ import annotations

import sys
import sysconfig

from torch.utils import cpp_extension

from adamhd.kernels import cpu


def test_same_environment_same_name():
    assert cpu.extension_name() == cpu.extension_name()


def test_another_interpreter_prefix_gets_another_entry(monkeypatch):
    here = cpu.extension_name()
    monkeypatch.setattr(sys, "prefix", sys.prefix + "-other-venv")
    assert cpu.extension_name() != here


def test_other_include_paths_get_another_entry(monkeypatch):
    here = cpu.extension_name()
    torch_includes = cpp_extension.include_paths()
    monkeypatch.setattr(cpp_extension, "include_paths",
                        lambda *a, **k: ["/other/checkout/include", *torch_includes[1:]])
    moved_torch = cpu.extension_name()
    monkeypatch.undo()
    paths = sysconfig.get_paths()
    monkeypatch.setattr(sysconfig, "get_paths",
                        lambda *a, **k: {**paths, "include": "/other/python/include"})
    moved_python = cpu.extension_name()
    assert len({here, moved_torch, moved_python}) == 3


def test_another_compiler_gets_another_entry(monkeypatch):
    here = cpu.extension_name()
    monkeypatch.setattr(cpu, "_compiler", lambda: "/opt/other/bin/c++")
    assert cpu.extension_name() != here

from __future__ import annotations

import pytest

from selfsup.registry import Registry, UnknownNameError


def test_register_create_and_list() -> None:
    registry: Registry[tuple] = Registry("widget")

    @registry.register("pair")
    def make_pair(a: int, b: int = 2) -> tuple:
        """A pair of numbers."""
        return (a, b)

    assert registry.create("pair", a=1) == (1, 2)
    assert registry.names() == ["pair"] and registry.names("p*") == ["pair"] and registry.names("x*") == []
    assert registry.summary("pair") == "A pair of numbers." and "pair" in registry and len(registry) == 1
    with pytest.raises(UnknownNameError, match="Did you mean 'pair'"):
        registry.get("pairs")
    with pytest.raises(TypeError, match="no option 'bb'.*Did you mean 'b'"):
        registry.create("pair", a=1, bb=3)
    with pytest.raises(TypeError, match="no option 'a'"):
        registry.check_kwargs("pair", {"a": 1}, provided=("a",))
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("pair")(make_pair)

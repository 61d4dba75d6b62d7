"""genloom.toolkit.kv_sharing: layouts and building a registered backbone with one."""

import pytest

from genloom.toolkit.kv_sharing import grouped_layout, owner_count


def test_grouped_layout():
    assert grouped_layout(4, 2) == [0, 0, 2, 2]
    assert grouped_layout(5, 2) == [0, 0, 0, 3, 3]
    assert grouped_layout(4, 4) == [0, 1, 2, 3]
    assert grouped_layout(4, 1) == [0, 0, 0, 0]
    assert owner_count(grouped_layout(7, 3)) == 3
    with pytest.raises(ValueError, match="between 1 and n_layers"):
        grouped_layout(3, 4)

"""Butcher tableaus check their own order conditions."""
import pytest

from sdesolve.solvers.tableaus import BOSH3, DOPRI5, RK4, TSIT5, ButcherTableau, rooted_trees, satisfies_order


def test_tree_counts():
    # rooted trees with n vertices: OEIS A000081
    assert [len(rooted_trees(n)) for n in range(1, 8)] == [1, 1, 2, 4, 9, 20, 48]


@pytest.mark.parametrize("tab", [RK4, BOSH3, DOPRI5, TSIT5], ids=lambda t: t.name)
def test_orders_are_sharp(tab):
    assert satisfies_order(tab.A, tab.b, tab.c, tab.order, 1e-9) == []
    assert satisfies_order(tab.A, tab.b, tab.c, tab.order + 1, 1e-9) != []
    if tab.b_hat is not None:
        assert satisfies_order(tab.A, tab.b_hat, tab.c, tab.embedded_order, 1e-9) == []


def test_wrong_tableaus_are_refused():
    with pytest.raises(ValueError, match="order conditions up to order 4"):
        ButcherTableau("bad", RK4.c, RK4.A, (1 / 6, 1 / 3, 1 / 3 + 1e-6, 1 / 6 - 1e-6), order=4)
    with pytest.raises(ValueError, match="row 1 of A sums"):
        ButcherTableau("bad", (0.0, 0.4), ((0, 0), (0.5, 0)), (0.0, 1.0), order=1)
    with pytest.raises(ValueError, match="strictly lower"):
        ButcherTableau("bad", (0.5,), ((0.5,),), (1.0,), order=1)

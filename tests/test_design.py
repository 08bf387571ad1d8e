"""bh_models.design: the BH-HRNet reconstruction reproduces the registered layouts from its stated rule."""

from __future__ import annotations

import pytest
import timm
from timm.models.hrnet import cfg_cls

from bh_models import cli, design
from bh_models.hrnet import BH_HRNET_CFGS
from bh_models.paper import TABLE4

MODELS = ('bh_hrnet_w18', 'bh_hrnet_w32')
SMALL_HW = (128, 160)  # every branch map scales exactly, so FLOPs are 1/16 of 640x512's


@pytest.fixture(scope='module')
def results() -> dict[str, design.SearchResult]:
    return {name: design.search(name, keep=20) for name in MODELS}


@pytest.mark.parametrize('name', MODELS)
def test_search_reproduces_the_registered_layout(results, name):
    result = results[name]
    assert result.winner.layout == design.layout_from_cfg(BH_HRNET_CFGS[name])
    assert design.layout_from_cfg(result.winner.layout.cfg()) == result.winner.layout
    row = next(r for r in TABLE4 if r.model == name)
    assert result.winner.accepted and row.params_ok(result.winner.params_m) and row.gflops_ok(result.winner.gflops)
    assert result.accepted > 1, 'the tolerance admits several layouts: the ranking, not the fit, picks one'


@pytest.mark.parametrize('name', MODELS)
def test_candidates_follow_the_rule_and_are_ranked(results, name):
    space = design.SearchSpace()
    result = results[name]
    for c in result.candidates:
        assert c.layout.deepest == design.DEEPEST[name]
        assert c.layout.layer1 in space.layer1
        for m, blocks in c.layout.stages:
            assert m in space.modules and all(b in space.blocks for b in blocks)
            assert list(blocks) == sorted(blocks, reverse=True), 'blocks must not increase towards low resolution'
    keys = [c.rank_key() for c in result.candidates]
    assert keys == sorted(keys)
    # nothing accepted is closer to HRNet's module counts than the winner
    assert result.winner.layout.module_distance == min(c.layout.module_distance for c in result.candidates)


def test_counting_matches_the_published_hrnet_numbers():
    """The cost model, with timm's stem, reproduces NOTES' hrnet_w18/w32 trunk counts at 640x512."""
    expected = {'hrnet_w18': (9.562, 21.711), 'hrnet_w32': (29.306, 51.933)}
    for std, (params_m, gflops) in expected.items():
        width = cfg_cls[std]['stage2']['num_channels'][0]
        params, flops = design.cost_model(width, stem='hrnet').cost(design.layout_from_cfg(cfg_cls[std]))
        assert (round(params / 1e6, 3), round(flops / 1e9, 3)) == (params_m, gflops)


def test_analytic_cost_equals_a_real_count():
    """Registered models and timm's hrnet_w18, built and counted end to end, equal the component sums."""
    for name in MODELS:
        layout = design.layout_from_cfg(BH_HRNET_CFGS[name])
        model = timm.create_model(name, features_only=True, feature_location='')
        assert design.count_trunk(model, SMALL_HW) == design.cost_model(layout.width, SMALL_HW).cost(layout)
        # the same components at the paper's size give the search's numbers
        winner = design.search(name, keep=1).winner
        assert (winner.params, winner.flops) == design.cost_model(layout.width).cost(layout)
    reference = timm.create_model('hrnet_w18', features_only=True, feature_location='')
    layout = design.layout_from_cfg(cfg_cls['hrnet_w18'])
    assert design.count_trunk(reference, SMALL_HW) == design.cost_model(18, SMALL_HW, 'hrnet').cost(layout)


def test_count_trunk_refuses_a_model_with_head_modules():
    with pytest.raises(ValueError, match="feature_location=''"):
        design.count_trunk(timm.create_model('bh_hrnet_w18', features_only=True))


def test_cli(results, capsys):
    assert cli.main(['design', 'hrnet', '--top', '3', '--no-verify']) == 0
    out = capsys.readouterr().out
    assert 'rule: BH stem' in out and 'calibration: timm hrnet_w18 trunk (analytic) 9.562 M, 21.711 GFLOPs' in out
    for name in MODELS:
        assert f'winner: {results[name].winner.layout}; registered in bh_models.hrnet: yes' in out
    assert out.count('  1  layer1') == 2 and '  4  layer1' not in out


def test_empty_search_space_is_a_clear_error():
    with pytest.raises(ValueError, match='no layout for stage 3'):
        design.search('bh_hrnet_w18', design.SearchSpace(blocks=range(1, 3)))

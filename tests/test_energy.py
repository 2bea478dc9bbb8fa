"""EnergyMeter: RAPL counters when readable (faked here), else a labelled CPU-time estimate."""

from fxsparse.energy import EnergyMeter


def test_rapl_counters_are_summed_over_packages(tmp_path):
    files = []
    for pkg in (0, 1):
        d = tmp_path / f"intel-rapl:{pkg}"
        d.mkdir()
        (d / "energy_uj").write_text("1000000")
        files.append(d / "energy_uj")
    meter = EnergyMeter(rapl_glob=str(tmp_path / "intel-rapl:[0-9]*" / "energy_uj"))
    assert not meter.estimated and "RAPL" in meter.method
    with meter:
        files[0].write_text("3000000")  # +2 J on package 0
        files[1].write_text("1500000")  # +0.5 J on package 1
    assert meter.joules == 2.5 and meter.calls == 1


def test_estimate_without_rapl_is_labelled(tmp_path):
    meter = EnergyMeter(watts_per_core=5.0, rapl_glob=str(tmp_path / "none*"))
    assert meter.estimated and "estimate" in meter.method and "5 W" in meter.method
    with meter:
        sum(i * i for i in range(200_000))  # some CPU time
    assert meter.joules > 0

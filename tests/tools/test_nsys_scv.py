"""tools/profiling/nsys_scv.py with fake nsys / QdstrmImporter binaries: every attempt and its
failure is recorded; a report, once made, is summarised by its scv_compute_mask row."""
import json

from tools.profiling import nsys_scv

FAKE_NSYS = """#!/bin/sh
case "$1" in
  --version) echo "NVIDIA Nsight Systems version 2025.fake"; exit 0 ;;
  profile)
    while [ "$1" != "-o" ]; do shift; done
    : > "$2.qdstrm"
    echo "Importer error: cannot create the report" >&2; exit 1 ;;
  stats)
    while [ "$1" != "--output" ]; do shift; done
    cat > "$2_nvtx_sum.csv" <<'CSV'
Time (%),Total Time (ns),Instances,Avg (ns),Med (ns),Min (ns),Max (ns),StdDev (ns),Style,Range
90.0,600000,6,100000.0,99000.0,90000,120000,9000.0,PushPop,:scv_shape/b64_k4
10.0,60000,6,10000.0,9900.0,9000,12000,900.0,PushPop,:scv_compute_mask
CSV
    exit 0 ;;
esac
exit 2
"""
IMPORTER_FAILS = "#!/bin/sh\necho 'QdstrmImporter: unsupported stream version' >&2\nexit 3\n"
IMPORTER_WORKS = """#!/bin/sh
f="$2"; : > "${f%.qdstrm}.nsys-rep"; exit 0
"""


def _fake(tmp_path, importer):
    d = tmp_path / "bin"
    d.mkdir()
    for name, text in (("nsys", FAKE_NSYS), ("QdstrmImporter", importer)):
        p = d / name
        p.write_text(text)
        p.chmod(0o755)
    return str(d / "nsys")


def test_records_what_fails(tmp_path):
    nsys = _fake(tmp_path, IMPORTER_FAILS)
    out = tmp_path / "o"
    assert nsys_scv.main(["--out-dir", str(out), "--modes", "off", "--nsys", nsys]) == 0
    res = json.loads((out / "nsys_attempt.json").read_text())
    assert res["status"] == "failed" and res["nsys"] == nsys
    e = res["modes"]["off"]
    assert e["status"].startswith("no report: nsys wrote a .qdstrm")
    steps = [a["step"] for a in e["attempts"]]
    assert steps[0] == "nsys profile" and "QdstrmImporter --input-file" in steps
    assert e["attempts"][0]["rc"] == 1 and "cannot create" in e["attempts"][0]["log_tail"]
    assert any("unsupported stream" in a.get("log_tail", "") for a in e["attempts"][1:])
    assert "Perfetto" in res["equivalent"]


def test_imported_report_is_summarised(tmp_path):
    nsys = _fake(tmp_path, IMPORTER_WORKS)
    out = tmp_path / "o"
    nsys_scv.main(["--out-dir", str(out), "--modes", "off,vectorized", "--nsys", nsys])
    res = json.loads((out / "nsys_attempt.json").read_text())
    assert res["status"] == "ok"
    for mode in ("off", "vectorized"):
        row = res["modes"][mode]["scv_compute_mask"]
        assert row["Instances"] == "6" and row["Total Time (ns)"] == "60000"


def test_no_nsys(tmp_path, monkeypatch):
    monkeypatch.setattr(nsys_scv, "find_nsys", lambda explicit=None: [])
    nsys_scv.main(["--out-dir", str(tmp_path)])
    res = json.loads((tmp_path / "nsys_attempt.json").read_text())
    assert res["status"].startswith("failed: nsys not found")

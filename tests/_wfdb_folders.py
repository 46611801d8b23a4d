"""Folders in the PhysioNet 2017 and PTB-XL layouts, built from the real CinC 2021 sample
(neither dataset ships in shared data). Used by the reader tests and the space tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
import wfdb
from scipy.signal import resample_poly


def build_cinc2017(cinc: Path, folder: Path) -> tuple[Path, dict[str, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    """A PhysioNet 2017-style folder: lead II of real records at 300 Hz, MAT v4 'val' files,
    REFERENCE.csv, and one header with the date before the time on the record line."""
    sources = ["HR06000", "E07500", "JS20000", "HR06001", "E07501", "JS20001"]
    lengths = [3000, 2700, 2100, 3000, 2400, 2850]
    labels = ["N", "A", "O", "~", "N", "A"]
    digital: dict[str, np.ndarray] = {}
    for k, (src, n) in enumerate(zip(sources, lengths, strict=True)):
        rec = f"A{k + 1:05d}"
        lead2 = wfdb.rdrecord(str(cinc / src), channel_names=["II"]).p_signal[:, 0]
        val = np.round(resample_poly(lead2, 3, 5)[:n] * 1000).astype(np.int16)
        scipy.io.savemat(folder / f"{rec}.mat", {"val": val[None, :]}, format="4")
        when = "05/01/2014 05:05:15" if k == 1 else "05:05:15 1/05/2014"
        (folder / f"{rec}.hea").write_text(
            f"{rec} 1 300 {n} {when}\n{rec}.mat 16+24 1000/mV 16 0 {val[0]} 0 0 ECG\n"
        )
        digital[rec] = val
    (folder / "REFERENCE.csv").write_text("".join(f"A{k + 1:05d},{lab}\n" for k, lab in enumerate(labels)))
    return folder, digital


PTBXL_CODES = [
    "{'NORM': 100.0, 'SR': 0.0}", "{'IMI': 100.0, 'ASMI': 50.0}", "{'NDT': 100.0}",
    "{'LVH': 100.0, 'NDT': 50.0}", "{'CLBBB': 100.0}", "{'SR': 0.0}", "{'NORM': 80.0}",
    "{'IMI': 100.0, 'CLBBB': 100.0}", "{'NORM': 100.0}", "{'LVH': 100.0}",
]
PTBXL_SUPER = [["NORM"], ["MI"], ["STTC"], ["HYP", "STTC"], ["CD"], [], ["NORM"], ["CD", "MI"], ["NORM"], ["HYP"]]
PATIENTS = [101, 101, 102, 103, 104, 104, 105, 106, 107, 108]
SUPERCLASSES = ["NORM", "MI", "STTC", "CD", "HYP"]


def build_ptbxl(cinc: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    names = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    rows = ["ecg_id,patient_id,age,sex,scp_codes,strat_fold,filename_lr,filename_hr"]
    for k, src in enumerate(sorted(p.stem for p in cinc.glob("HR*.hea"))):
        sig = wfdb.rdrecord(str(cinc / src)).p_signal
        for rate, sub, x in (("hr", "records500", sig), ("lr", "records100", resample_poly(sig, 1, 5, axis=0))):
            out = folder / sub / "00000"
            out.mkdir(parents=True, exist_ok=True)
            wfdb.wrsamp(f"{k + 1:05d}_{rate}", fs=500 if rate == "hr" else 100, units=["mV"] * 12,
                        sig_name=names, p_signal=x, fmt=["16"] * 12, adc_gain=[1000.0] * 12,
                        baseline=[0] * 12, write_dir=str(out))
        rows.append(f'{k + 1},{PATIENTS[k]}.0,60.0,0,"{PTBXL_CODES[k]}",{k % 10 + 1},'
                    f"records100/00000/{k + 1:05d}_lr,records500/00000/{k + 1:05d}_hr")
    (folder / "ptbxl_database.csv").write_text("\n".join(rows) + "\n")
    (folder / "scp_statements.csv").write_text(
        ",description,diagnostic,form,rhythm,diagnostic_class,diagnostic_subclass,Statement Category\n"
        "NORM,normal ECG,1.0,,,NORM,NORM,Normal\nIMI,inferior MI,1.0,,,MI,IMI,MI\n"
        "ASMI,anteroseptal MI,1.0,,,MI,AMI,MI\nNDT,non-diagnostic T,1.0,1.0,,STTC,STTC,ST\n"
        "LVH,left ventricular hypertrophy,1.0,,,HYP,LVH,HYP\nCLBBB,complete LBBB,1.0,,,CD,CLBBB,CD\n"
        "SR,sinus rhythm,,,1.0,,,rhythm\n"
    )
    return folder

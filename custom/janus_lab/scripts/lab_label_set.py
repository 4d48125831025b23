#!/usr/bin/env python3
"""Labelled sets of method outputs: the judge validated on what it judges (preregistration.md,
seventh entry). Run from the repository root:

    # 1. the items (shuffled, random ids) and the labellers' sheets (images only)
    python custom/janus_lab/scripts/lab_label_set.py sheets --set custom/janus_lab/validation/set-a \
        --runs outputs/lab-label-a-s7.5 outputs/lab-label-a-s100 --view2d outputs/lab-label-a-2d \
        --sheets outputs/label-sheets-a
    # 2. labellers write <set>/labels-<name>-orbits.csv and labels-<name>-images.csv
    #    (custom/janus_lab/validation/INSTRUCTIONS.md); the reference labels and their agreement:
    python custom/janus_lab/scripts/lab_label_set.py merge --set custom/janus_lab/validation/set-a \
        --labellers first second [--third third]
    # 3. the judge against the reference (only after the labels are committed)
    python custom/janus_lab/scripts/lab_label_set.py evaluate --set custom/janus_lab/validation/set-a
    # a 3D table's outcomes read by the labellers (sets whose orbits are the table's runs)
    python custom/janus_lab/scripts/lab_label_set.py people --set custom/janus_lab/validation/set-c \
        custom/janus_lab/validation/set-d custom/janus_lab/validation/set-e1 custom/janus_lab/validation/set-e2
    # 4. a judge's face verdict calibrated on development sets (their labels), cross-validated there
    python custom/janus_lab/scripts/lab_label_set.py calibrate --set custom/janus_lab/validation/set-a \
        custom/janus_lab/validation/set-b --judge custom/janus_lab/models/judge-v9 --targets votes \
        --weight-decay 0.01 --threshold 0.7 --out custom/janus_lab/models/judge-v11
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # custom/ of this checkout

from janus_lab.cli_args import (existing_folder, integer_at_least, number_in, refuse_repeats,  # noqa: E402
                                require_output_folder)


def sheets(args) -> int:
    from janus_lab.label_sets import (image_sources, make_items, orbit_sources, write_manifest,  # deferred: torch
                                      write_sheets)
    items = make_items(orbit_sources(args.runs), image_sources(args.view2d))
    if not items:
        print("error: no finished runs or 2D samples under --runs / --view2d", file=sys.stderr)
        return 1
    manifest = write_manifest(items, args.set)
    paths = write_sheets(items, args.sheets)
    print(f"{sum(i.kind == 'orbit' for i in items)} orbits, {sum(i.kind == 'image' for i in items)} images; "
          f"manifest {manifest}; {len(paths)} sheets in {args.sheets}")
    return 0


def merge(args) -> int:
    from janus_lab.label_agreement import cohen_kappa, labeller_files, reference  # deferred: one import path
    files = labeller_files(args.set)
    missing = [n for n in [*args.labellers, *([args.third] if args.third else [])] if n not in files]
    if missing:
        print(f"error: no labels-<name>*.csv in {args.set} for {missing}; found {sorted(files)}", file=sys.stderr)
        return 1
    first, second = files[args.labellers[0]], files[args.labellers[1]]
    ref, pending = reference(first, second, files.get(args.third, {}) if args.third else {})
    fields = sorted({f for item in first.values() for f in item})
    kappa = {f: cohen_kappa([(first[i][f], second[i][f]) for i in first if i in second and f in first[i]
                             and f in second[i]]) for f in fields}
    with open(os.path.join(args.set, "reference.json"), "w") as f:
        json.dump({"labellers": args.labellers, "third": args.third, "labels": ref,
                   "pending": pending, "kappa": kappa}, f, indent=1)
    print(f"{len(ref)} items; cells still undecided (first two disagree, no third label): {len(pending)}")
    print("Cohen's kappa of the first two: " + ", ".join(f"{k} {v:.2f}" for k, v in kappa.items()))
    pending_file = os.path.join(args.set, "pending.csv")
    if not pending and os.path.exists(pending_file):
        os.remove(pending_file)  # every cell decided: no stale list
    if pending:
        with open(pending_file, "w") as f:
            f.write("id,field\n" + "".join(f"{i},{fld}\n" for i, fld in pending))
        print(f"the cells to give a third labeller: {pending_file}")
    return 0


def evaluate(args) -> int:
    from janus_lab.label_judging import evaluate_sets  # deferred: loads the judge
    report = evaluate_sets(args.set, args.judge)
    print(report)
    return 0


def calibrate(args) -> int:
    from janus_lab import judge_calibration  # deferred: loads the judge
    decay = judge_calibration.WEIGHT_DECAY if args.weight_decay is None else args.weight_decay
    record = judge_calibration.calibrate(args.judge, args.set, args.out, decay, args.threshold, args.targets,
                                         args.folds, args.method, args.orbit_window)["calibration"]
    print(f"{record['frames']} frames and {record['images']} images ({record['faces']} faces, targets "
          f"{record['targets']}); {args.method}, weight decay {record['weight_decay']}, threshold {args.threshold}, "
          f"orbit face window {args.orbit_window} degrees; "
          f"written {args.out}")
    for name, figures in record["cross_validated"].items():
        if name != "folds":
            how = "each set judged by a verdict fit on the others" if name == "across_sets" else \
                f"{args.folds} folds of whole prompt-and-seed groups"
            print(f"cross-validated, {name} ({how}): " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))
    return 0


def people(args) -> int:
    from janus_lab.label_tables import people_table  # deferred: imports the 3D experiment's tables
    print(people_table(args.set))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sheets", help="the items and the labellers' sheets")
    p.add_argument("--set", required=True, help="the set's folder (manifest.json, labels, reference)")
    p.add_argument("--runs", nargs="*", type=existing_folder, default=[], help="3D experiment output folders")
    p.add_argument("--view2d", nargs="*", type=existing_folder, default=[], help="2D experiment output folders")
    p.add_argument("--sheets", required=True, help="folder for the sheets (images only)")
    p = sub.add_parser("merge", help="reference labels from the labellers' files")
    p.add_argument("--set", required=True, type=existing_folder)
    p.add_argument("--labellers", nargs=2, required=True, metavar="NAME")
    p.add_argument("--third", help="the labeller who decides where the first two disagree")
    p = sub.add_parser("evaluate", help="the judge against the reference labels: the gate")
    p.add_argument("--set", required=True, nargs="+", type=existing_folder,
                   help="the set, or the parts of one test set (the gate on their pooled figures)")
    p.add_argument("--judge", type=existing_folder, default=None, help="a judge folder (default: the committed judge)")
    p = sub.add_parser("people", help="a 3D table's outcomes and paired tests read from the sets' reference labels")
    p.add_argument("--set", required=True, nargs="+", type=existing_folder,
                   help="labelled sets whose orbits are one table's runs")
    p = sub.add_parser("calibrate", help="a judge with its face verdict fit to development sets' labels")
    p.add_argument("--set", required=True, nargs="+", type=existing_folder, help="the development sets")
    p.add_argument("--judge", required=True, type=existing_folder, help="the judge folder to calibrate")
    p.add_argument("--out", required=True, help="the calibrated judge's folder (new)")
    p.add_argument("--weight-decay", type=number_in(0.0, low_open=True), default=None, help="the probe's L2 weight (default 1e-3)")
    p.add_argument("--method", choices=("probe", "finetune"), default="probe",
                   help="a linear probe of the judge's features (default), or the whole network fine-tuned")
    p.add_argument("--targets", choices=("reference", "votes"), default="reference",
                   help="fit the reference label, or the share of labellers who saw a face (default reference)")
    p.add_argument("--threshold", type=number_in(0.0, 1.0, low_open=True, high_open=True), default=0.5,
                   help="'face' where the probe's probability exceeds this (default 0.5)")
    p.add_argument("--folds", type=integer_at_least(0), default=8,
                   help="cross-validation folds pooled over the sets (default 8; 0: none, only across sets)")
    p.add_argument("--orbit-window", type=number_in(0.0, 180.0, high_open=True), default=0.0, metavar="DEG",
                   help="on an orbit, a frame's face probability averaged over the frames within this azimuth "
                        "before its verdict (default 0: none; janus.window_mean)")
    args = parser.parse_args(argv)
    if args.command == "sheets":
        refuse_repeats(parser, args, ["--runs", "--view2d"])
        for option, path in (("--set", args.set), ("--sheets", args.sheets)):
            require_output_folder(parser, option, path)
    if args.command == "calibrate":
        refuse_repeats(parser, args, ["--set"])
        if os.path.exists(os.path.join(args.out, "judge.safetensors")):
            parser.error(f"argument --out: {args.out} already holds a judge; name a new folder")
        if args.method == "finetune" and args.weight_decay is not None:
            parser.error("argument --weight-decay: the probe's; --method finetune uses its own recipe "
                         "(janus_lab.judge_calibration.FINETUNE)")
        if args.folds == 1:
            parser.error("argument --folds: 0 (none) or at least 2")
        require_output_folder(parser, "--out", args.out)
    if args.command == "merge":
        refuse_repeats(parser, args, ["--labellers"])
    if args.command in ("evaluate", "people"):
        refuse_repeats(parser, args, ["--set"])
    return {"sheets": sheets, "merge": merge, "evaluate": evaluate, "calibrate": calibrate,
            "people": people}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())

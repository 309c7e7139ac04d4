"""The report and summary commands (parsing and printing; the work is in report/)."""

from __future__ import annotations

import argparse

from ..outputs_guard import check_outputs


def cmd_report(args: argparse.Namespace) -> int:
    from ..report import report_outputs, write_reports

    outputs = report_outputs(args.model, args.verify_json, args.out_dir, plots=not args.no_plots)
    check_outputs(args.verify_json + args.c_check + ([args.source_record] if args.source_record else []), outputs)
    for path in write_reports(args.model, args.verify_json, args.out_dir, c_check_paths=args.c_check,
                              plots=not args.no_plots, source_record_path=args.source_record):
        print(f"wrote {path}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from ..report import write_summary

    outputs = [p for p in (args.md, args.json, args.html, args.figure) if p]
    check_outputs(args.reports, outputs)
    write_summary(args.reports, args.md, args.json, out_html=args.html, out_png=args.figure)
    for path in outputs:
        print(f"wrote {path}")
    return 0

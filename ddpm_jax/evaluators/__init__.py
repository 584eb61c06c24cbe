"""Evaluation: bits/dim (``bpd``), sample quality (``sample_quality``:
the digits score or FID / IS), and the pieces they use (``metrics``,
``fid``, ``digits_score``, ``digits_judge``). ``common`` builds the
evaluators a training run calls every N steps."""

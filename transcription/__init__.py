"""Audio transcription jobs (issue 4): probe, normalise, split, transcribe, outputs."""

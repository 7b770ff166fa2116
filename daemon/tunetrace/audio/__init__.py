"""What every stage shares about audio: decoding files, cutting windows, log-mel features, resampling."""

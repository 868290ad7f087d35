"""The archive (the decoy): records every request, score and decision as Parquet."""

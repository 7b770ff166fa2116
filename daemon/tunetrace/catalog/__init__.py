"""Building the catalog: folders of audio files become tracks and window vectors in Milvus."""

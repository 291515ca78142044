"""Moving SAEs in and out: importing SAELens / GemmaScope / sparsify folders, exporting in the SAELens
and Neuronpedia formats, the Hugging Face hub, and workshop bundles."""

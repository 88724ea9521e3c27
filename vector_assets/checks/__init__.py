"""Asset checks on every tenant-day: vectors before the write, coverage and retrieval after.

The checks are declared on the tenant-day multi-asset (``check_specs``) and evaluated inside
its step, per partition, because a run covers many tenant-days and a blocking check must stop
only its own partition's write. Thresholds: :class:`vector_assets.embed.quality.QualityThresholds`.

==================  ==============  ========  ===========================================
check               asset           blocking  guards
==================  ==============  ========  ===========================================
text_frame_valid    extracted_text  yes       ids present and unique, tenant/day match the
                                              partition, text length in bounds (Great
                                              Expectations)
vector_quality      milvus_vectors  yes       NaN/Inf, dimensions, raw norm, zero values,
                                              zero vectors, duplicates (quality score)
coverage            milvus_vectors  no        source = texts + quarantined = Milvus rows;
                                              every row's content hash matches its text
coherence           milvus_vectors  no        stored vectors agree with the model now
retrievability      milvus_vectors  no        a stored vector finds itself first
processing_time     milvus_vectors  no        ms per vector
failure_rate        source_records  no        bad records / records read (superseded lines left out)
==================  ==============  ========  ===========================================
"""

from .specs import CHECK_SPECS, CHECKS

# The checks are declared on the multi-asset itself (``check_specs``); nothing to add here.
all_checks: list = []

"""Datasets turned into MONAI datalists (training / validation / test lists of {image, label})."""

from medsam_peft.data.catalog import DATASETS, Archive, DatasetSpec, DatasetUnavailable, dataset_modality, prepare_dataset
from medsam_peft.data.collate import PadRaggedCollate
from medsam_peft.data.colin27 import SUBCORTICAL, colin27_pairs, prepare_colin27_aal
from medsam_peft.data.datalist import (
    CheckedCacheDataset,
    ensure_datalist,
    load_datalist,
    load_requests,
    read_datalist,
)
from medsam_peft.data.volumes import prepare_invesalius_ct, read_invesalius_project, slice_cases, to_uint8

__all__ = [
    "DATASETS", "SUBCORTICAL", "Archive", "CheckedCacheDataset", "DatasetSpec", "DatasetUnavailable", "PadRaggedCollate", "colin27_pairs", "dataset_modality",
    "ensure_datalist", "load_datalist", "load_requests", "prepare_colin27_aal", "read_datalist",
    "prepare_dataset", "prepare_invesalius_ct", "read_invesalius_project", "slice_cases", "to_uint8",
]

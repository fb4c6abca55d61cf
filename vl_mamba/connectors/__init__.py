"""Multimodal connectors (MLP, VSS-MLP, VSS-L2), the VSS 2D selective-scan module and its scan orders."""

from vl_mamba.connectors.base import Connector
from vl_mamba.connectors.mlp import MLPConnector
from vl_mamba.connectors.scan_orders import SCAN_ORDERS, merge, register_scan_order, scan, scan_permutations, unscan
from vl_mamba.connectors.vss import VSS
from vl_mamba.connectors.vss_connectors import VSSL2Connector, VSSMLPConnector

__all__ = [
    "SCAN_ORDERS",
    "VSS",
    "Connector",
    "MLPConnector",
    "VSSL2Connector",
    "VSSMLPConnector",
    "merge",
    "register_scan_order",
    "scan",
    "scan_permutations",
    "unscan",
]

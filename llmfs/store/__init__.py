"""The LMDB store: schema and transactions.  Knows frames only as bytes."""
from .database import DamagedRecord, Store, StoreError, StoreLock, Txn
from .schema import DAMAGED, FORMAT_VERSION, ROOT_INO, Inode, block_key

__all__ = ["Store", "StoreError", "StoreLock", "Txn", "Inode", "DamagedRecord", "DAMAGED",
           "FORMAT_VERSION", "ROOT_INO", "block_key"]

"""Several ledger nodes for a consortium: etcd-ordered batches, quorum certificates.

Modules (docs/consortium.md):
  errors     the error tree of this package
  etcd       a small etcd v3 client over etcd's JSON gateway (put, range, watch, compact)
  codec      deterministic CBOR for what goes through etcd: batches, signatures, progress
  cstore     the node-local consortium tables, and the store that writes the applied etcd
             revision in each block's transaction
  driver     the node's consortium side: proposing, following the etcd log, exchanging
             signatures, finality, receipts, compaction
ledger_node.quorum (node sets and quorum certificates, pure) and ledger_node.block_sync
(catch-up from peers over the API) sit beside this package.
"""

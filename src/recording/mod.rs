//! Recordings on disk, shared by the recorder and hindsight: the capture
//! journal (checksummed records, written as a capture goes) and its
//! conversion to a Parquet file laid out as Rezolus recordings are.

pub mod journal;
pub mod parquet;

//! Recordings on disk, shared by the recorder and hindsight: the capture
//! journal (checksummed records, written as a capture goes) and its
//! conversion to a Parquet file laid out as Rezolus recordings are; reading
//! such files back ([`reader`]) and answering questions about them
//! ([`query`]).

pub mod journal;
pub mod parquet;
pub mod query;
pub mod reader;
mod spill;
pub(crate) mod varint;

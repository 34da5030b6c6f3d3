//! Lunar layer 3: SCSI. Decodes CDBs into typed commands, executes disk
//! commands (SBC-4 / SPC-5) against a block backend, and encodes status and
//! sense. Knows nothing of threads, transports or request lists.
//!
//! CONTRACT used by the target core (keep these signatures stable):
//! - `Command::decode(cdb: &[u8]) -> Result<Command, ScsiError>`
//! - `Command::direction(&self) -> DataDirection` and `Command::data_out_len(&self, block_size: u32) -> usize`
//! - `Command::is_unit_attention_exempt(&self) -> bool` (INQUIRY, REPORT LUNS, REQUEST SENSE)
//! - `Disk::new(DiskConfig, Backend) -> Disk`, `Disk` is `Send + Sync`
//! - `Disk::execute(&self, &Command, data_out: Vec<u8>, ctx: &ExecContext) -> Result<Vec<u8>, ScsiError>` (async, not Send)
//! - `ScsiError::sense(&self) -> Sense`, `ScsiError::status(&self) -> Status`
//! - `Sense::fixed(&self) -> Vec<u8>` (18 bytes), `Sense::descriptor(&self) -> Vec<u8>`
//! - `sense::asc` constants, `report_luns_data(&[u64]) -> Vec<u8>`, `lun` addressing helpers
//! Lunar layer 3: SCSI

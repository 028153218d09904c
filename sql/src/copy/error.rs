//! The COPY path's error and the SQLSTATEs it reports, and how it becomes
//! the front end's [`SqlError`].

use crate::errors::SqlError;

/// An error of the COPY path, with its PostgreSQL SQLSTATE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CopyError {
    pub sqlstate: &'static str,
    pub message: String,
}

impl CopyError {
    pub fn new(sqlstate: &'static str, message: impl Into<String>) -> Self {
        Self {
            sqlstate,
            message: message.into(),
        }
    }
}

impl From<CopyError> for SqlError {
    fn from(e: CopyError) -> Self {
        SqlError::User {
            sqlstate: e.sqlstate,
            message: e.message,
        }
    }
}

pub(super) const INVALID_TEXT_REPRESENTATION: &str = "22P02";
pub(super) const NUMERIC_VALUE_OUT_OF_RANGE: &str = "22003";
pub(super) const BAD_COPY_FILE_FORMAT: &str = "22P04";
pub(super) const INVALID_BINARY_REPRESENTATION: &str = "22P03";
pub(super) const CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";
pub(super) const NOT_NULL_VIOLATION: &str = "23502";
pub(super) const INVALID_DATETIME_FORMAT: &str = "22007";
pub(super) const DATETIME_FIELD_OVERFLOW: &str = "22008";
pub(super) const FEATURE_NOT_SUPPORTED: &str = "0A000";
pub(super) const INVALID_PARAMETER_VALUE: &str = "22023";
pub(super) const SYNTAX_ERROR: &str = "42601";
pub(super) const PROGRAM_LIMIT_EXCEEDED: &str = "54000";

//! Mapping engine and DataFusion errors to gRPC status codes: user mistakes are
//! `INVALID_ARGUMENT` (with DataFusion's message), missing objects `NOT_FOUND`, memory pressure
//! `RESOURCE_EXHAUSTED`; `INTERNAL` is kept for bugs.

use datafusion::error::DataFusionError;
use engine::EngineError;
use tonic::Status;

/// Status for an engine error (planning or execution of a client statement).
pub(crate) fn engine_status(e: EngineError) -> Status {
    match e {
        EngineError::Statement { source, kind, .. } => {
            let status = datafusion_status(&source);
            Status::new(status.code(), format!("{kind}: {}", status.message()))
        }
        EngineError::DataFusion(e) => datafusion_status(&e),
        EngineError::CheckFailed { message, .. } => {
            Status::failed_precondition(format!("CHECK: {message}"))
        }
        other => Status::internal(other.to_string()),
    }
}

/// Status for a DataFusion error.
pub(crate) fn datafusion_status(e: &DataFusionError) -> Status {
    let message = e.to_string();
    let root = e.find_root();
    match root {
        DataFusionError::ResourcesExhausted(_) => Status::resource_exhausted(message),
        DataFusionError::NotImplemented(_) => Status::unimplemented(message),
        DataFusionError::Internal(_) => Status::internal(message),
        DataFusionError::ExecutionJoin(_) => Status::internal(message),
        DataFusionError::ObjectStore(e)
            if matches!(**e, datafusion::object_store::Error::NotFound { .. }) =>
        {
            Status::not_found(message)
        }
        DataFusionError::Plan(_) | DataFusionError::SchemaError(_, _) if is_not_found(&message) => {
            Status::not_found(message)
        }
        DataFusionError::IoError(io) if io.kind() == std::io::ErrorKind::NotFound => {
            Status::not_found(message)
        }
        _ => Status::invalid_argument(message),
    }
}

fn is_not_found(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    (m.contains("table") || m.contains("view") || m.contains("schema") || m.contains("catalog"))
        && (m.contains("not found") || m.contains("doesn't exist") || m.contains("does not exist"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let plan = DataFusionError::Plan("table 'datafusion.public.nope' not found".into());
        assert_eq!(datafusion_status(&plan).code(), tonic::Code::NotFound);
        let sql = DataFusionError::Plan("Invalid function 'foo'".into());
        assert_eq!(datafusion_status(&sql).code(), tonic::Code::InvalidArgument);
        let mem = DataFusionError::ResourcesExhausted("x".into()).context("while hashing");
        assert_eq!(
            datafusion_status(&mem).code(),
            tonic::Code::ResourceExhausted
        );
        let bug = DataFusionError::Internal("x".into());
        assert_eq!(datafusion_status(&bug).code(), tonic::Code::Internal);
    }
}

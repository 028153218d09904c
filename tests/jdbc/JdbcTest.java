// The PostgreSQL JDBC driver (Debian's libpostgresql-jdbc-java) against
// slicedb: DatabaseMetaData (getSchemas, getTables, getColumns), prepared
// statement batches, setFetchSize with autocommit off, Statement.cancel()
// of a long query, and the SQLSTATE of errors. Every check compares an
// answer; the first failed check exits 1.
//
// Usage (tests/it/jdbc.rs does this):
//   javac -d OUT -cp /usr/share/java/postgresql.jar tests/jdbc/JdbcTest.java
//   java -cp OUT:/usr/share/java/postgresql.jar JdbcTest jdbc:postgresql://127.0.0.1:PORT/slicedb slicedb

import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.sql.Types;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicReference;

public class JdbcTest {
    static void check(boolean cond, String what) {
        if (!cond) {
            System.out.println("FAILED: " + what);
            System.exit(1);
        }
        System.out.println("ok: " + what);
    }

    /** The SQLSTATE `sql` fails with, or "none". */
    static String sqlstate(Connection c, String sql) {
        try (Statement s = c.createStatement()) {
            s.execute(sql);
            return "none";
        } catch (SQLException e) {
            return e.getSQLState();
        }
    }

    public static void main(String[] args) throws Exception {
        String url = args[0];
        String user = args.length > 1 ? args[1] : "slicedb";
        try (Connection c = DriverManager.getConnection(url, user, "")) {
            metadata(c);
            batches(c);
            fetchSize(c);
            errors(c);
            cancel(c);
        }
        System.out.println("all jdbc checks passed");
    }

    static void metadata(Connection c) throws SQLException {
        try (Statement s = c.createStatement()) {
            s.execute("CREATE TABLE jt (k bigint, n numeric(12,2), s text, d date) DISTRIBUTE ON (k)");
        }
        DatabaseMetaData md = c.getMetaData();
        check(md.getDatabaseProductName().equals("PostgreSQL"),
              "product name: " + md.getDatabaseProductName());
        check(md.getDatabaseMajorVersion() == 15, "major version: " + md.getDatabaseMajorVersion());

        List<String> schemas = new ArrayList<>();
        try (ResultSet rs = md.getSchemas()) {
            while (rs.next()) schemas.add(rs.getString("TABLE_SCHEM"));
        }
        check(schemas.contains("public"), "getSchemas lists public: " + schemas);

        List<String> tables = new ArrayList<>();
        try (ResultSet rs = md.getTables(null, "public", "jt", new String[] {"TABLE"})) {
            while (rs.next()) {
                tables.add(rs.getString("TABLE_SCHEM") + "." + rs.getString("TABLE_NAME") + ":"
                           + rs.getString("TABLE_TYPE"));
            }
        }
        check(tables.equals(List.of("public.jt:TABLE")), "getTables finds jt: " + tables);

        List<String> all = new ArrayList<>();
        try (ResultSet rs = md.getTables(null, null, "%", new String[] {"TABLE"})) {
            while (rs.next()) all.add(rs.getString("TABLE_NAME"));
        }
        check(all.contains("jt"), "getTables with a pattern lists jt: " + all);

        List<String> cols = new ArrayList<>();
        try (ResultSet rs = md.getColumns(null, "public", "jt", null)) {
            while (rs.next()) {
                cols.add(rs.getInt("ORDINAL_POSITION") + ":" + rs.getString("COLUMN_NAME") + ":"
                         + rs.getString("TYPE_NAME") + ":" + rs.getInt("DATA_TYPE"));
            }
        }
        List<String> want = List.of(
            "1:k:int8:" + Types.BIGINT,
            "2:n:numeric:" + Types.NUMERIC,
            "3:s:text:" + Types.VARCHAR,
            "4:d:date:" + Types.DATE);
        check(cols.equals(want), "getColumns of jt: " + cols + " (want " + want + ")");
    }

    static void batches(Connection c) throws SQLException {
        try (Statement s = c.createStatement()) {
            s.execute("CREATE TABLE jb (k bigint, v text) DISTRIBUTE ON (k)");
        }
        int n = 1000;
        try (PreparedStatement ps = c.prepareStatement("INSERT INTO jb VALUES (?, ?)")) {
            for (int i = 1; i <= n; i++) {
                ps.setLong(1, i);
                ps.setString(2, "v" + i);
                ps.addBatch();
            }
            int[] counts = ps.executeBatch();
            int total = 0;
            for (int k : counts) total += k;
            check(counts.length == n && total == n,
                  "executeBatch: " + counts.length + " statements, " + total + " rows");
        }
        try (Statement s = c.createStatement();
             ResultSet rs = s.executeQuery("SELECT count(*), sum(k), max(v) FROM jb")) {
            rs.next();
            check(rs.getLong(1) == n && rs.getLong(2) == (long) n * (n + 1) / 2
                      && rs.getString(3).equals("v999"),
                  "batched rows arrived: " + rs.getLong(1) + " " + rs.getLong(2) + " " + rs.getString(3));
        }
    }

    static void fetchSize(Connection c) throws SQLException {
        int n = 5000;
        try (Statement s = c.createStatement()) {
            s.execute("CREATE TABLE jf (k bigint) DISTRIBUTE ON (k)");
            s.execute("INSERT INTO jf SELECT value FROM generate_series(1, " + n + ")");
        }
        c.setAutoCommit(false);
        long count = 0, sum = 0;
        try (Statement s = c.createStatement()) {
            s.setFetchSize(100);
            try (ResultSet rs = s.executeQuery("SELECT k FROM jf")) {
                while (rs.next()) {
                    count++;
                    sum += rs.getLong(1);
                }
            }
        }
        c.commit();
        c.setAutoCommit(true);
        check(count == n && sum == (long) n * (n + 1) / 2,
              "setFetchSize(100) with autocommit off: " + count + " rows, sum " + sum);
    }

    static void errors(Connection c) {
        check(sqlstate(c, "SELECT * FROM jdbc_no_such_table").equals("42P01"),
              "unknown table: SQLSTATE 42P01");
        check(sqlstate(c, "SELEC 1").equals("42601"), "syntax error: SQLSTATE 42601");
        check(sqlstate(c, "SELECT 1/0").equals("22012"), "division by zero: SQLSTATE 22012");
        check(sqlstate(c, "SELECT 1").equals("none"), "the connection still works after errors");
    }

    static void cancel(Connection c) throws Exception {
        AtomicReference<String> state = new AtomicReference<>("none");
        try (Statement s = c.createStatement()) {
            Thread t = new Thread(() -> {
                try {
                    s.executeQuery("SELECT count(*) FROM generate_series(1, 100000) a(x), "
                                   + "generate_series(1, 100000) b(y) WHERE a.x + b.y = 7");
                } catch (SQLException e) {
                    state.set(e.getSQLState());
                }
            });
            long start = System.nanoTime();
            t.start();
            Thread.sleep(1000);
            s.cancel();
            t.join(60_000);
            check(!t.isAlive(), "the canceled query returned");
            check(state.get().equals("57014"), "Statement.cancel(): SQLSTATE " + state.get());
        }
        try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT 41 + 1")) {
            rs.next();
            check(rs.getInt(1) == 42, "the connection works after the cancel");
        }
    }
}

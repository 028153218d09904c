// The PostgreSQL JDBC driver against slicedb's authentication (run by
// tests/it/auth.rs): the right password connects (SCRAM-SHA-256) and reads
// table t (3 rows, granted to USER); a wrong password is refused with
// 28P01; a database no host-based rule names with 28000. PARAMS are added
// to every URL (sslmode=verify-full&sslrootcert=... for TLS); with TLS a
// plain connection (sslmode=disable) is refused with 28000 too.
//
// Usage:
//   javac -d OUT -cp /usr/share/java/postgresql.jar tests/jdbc/JdbcAuth.java
//   java -cp OUT:/usr/share/java/postgresql.jar JdbcAuth HOST:PORT USER PASSWORD [PARAMS]

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;

public class JdbcAuth {
    static void check(boolean cond, String what) {
        if (!cond) {
            System.out.println("FAILED: " + what);
            System.exit(1);
        }
        System.out.println("ok: " + what);
    }

    static Connection connect(String url, String user, String password) throws SQLException {
        Properties p = new Properties();
        p.setProperty("user", user);
        p.setProperty("password", password);
        p.setProperty("connectTimeout", "20");
        return DriverManager.getConnection(url, p);
    }

    /** The SQLSTATE connecting fails with, or "none". */
    static String refusal(String url, String user, String password) {
        try (Connection c = connect(url, user, password)) {
            return "none";
        } catch (SQLException e) {
            System.out.println("refused: " + e.getMessage());
            return e.getSQLState();
        }
    }

    public static void main(String[] args) throws Exception {
        String hostPort = args[0], user = args[1], password = args[2];
        String params = args.length > 3 ? args[3] : "sslmode=disable";
        String url = "jdbc:postgresql://" + hostPort + "/slicedb?" + params;
        try (Connection c = connect(url, user, password);
             Statement s = c.createStatement();
             ResultSet rs = s.executeQuery("SELECT count(*) FROM t")) {
            check(rs.next() && rs.getLong(1) == 3, "the right password reads t's 3 rows");
        }
        check(refusal(url, user, password + "-wrong").equals("28P01"), "a wrong password is 28P01");
        String other = "jdbc:postgresql://" + hostPort + "/otherdb?" + params;
        check(refusal(other, user, password).equals("28000"), "no rule for otherdb is 28000");
        if (args.length > 3) {
            String plain = "jdbc:postgresql://" + hostPort + "/slicedb?sslmode=disable";
            check(refusal(plain, user, password).equals("28000"), "without TLS: 28000");
        }
        System.out.println("all jdbc auth checks passed");
    }
}
